"""Fault campaign (issue 11 §3, §5): damaged and hostile inputs give one-line errors.

Every case runs the real command through click's CliRunner (or, for loaders without a
cheap command, the library function) and asserts: the exit status, one `error:` line
naming the file (and line) with the reason, no traceback, and that what was written
before is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from abaw.cli import main
from abaw.data.labels import ANNOTATION_HEADER, MAX_FRAME, SUBMISSION_HEADER
from abaw.errors import AbawError

TINY = "timm:test_efficientnet_gn?size=64&pretrained=0"
AU0 = ",".join("0" * 12)
BIG = {  # frame numbers that overflow int32 / int64 / uint64, or wrap to 1 at 2^32
    "2^31": 2**31, "2^63": 2**63, "2^64+1": 2**64 + 1, "wrap-2^32+1": 2**32 + 1,
}


def tree_digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (missing paths are recorded as such)."""
    out: dict[str, str] = {}
    for p in paths:
        if not p.exists():
            out[str(p)] = "missing"
            continue
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line(r, *needles: str, code: int = 1) -> str:
    """The run exited `code` with exactly one `error:` line holding every needle, no traceback."""
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.output
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------- text files


def ann_text(frame: int = 1, video: str = "v1") -> str:
    return (f"{ANNOTATION_HEADER}\n{video}/00001.jpg,0.1,0.2,3,{AU0}\n"
            f"{video}/{frame:05d}.jpg,0.1,0.2,3,{AU0}\n")


def mtl_text(frame: int = 1, video: str = "v1") -> str:
    return f"{SUBMISSION_HEADER}\n{video}/00001.jpg,\n{video}/{frame:05d}.jpg,\n"


def sub_text(frame: int = 2, va: str = "0.1", video: str = "v1") -> str:
    return (f"{SUBMISSION_HEADER}\n{video}/00001.jpg,0.1,0.2,3,{AU0}\n"
            f"{video}/{frame:05d}.jpg,{va},0.2,3,{AU0}\n")


@pytest.fixture
def files(tmp_path):
    """Good annotation/test-list/submission files, an output folder that must stay untouched."""
    (tmp_path / "ann.txt").write_text(ann_text(2))
    (tmp_path / "MTL.txt").write_text(mtl_text(2))
    (tmp_path / "sub.txt").write_text(sub_text(2))
    (tmp_path / "score.json").write_text('{"before": true}\n')
    (tmp_path / "videos").mkdir()
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "videos" / "unused.txt")
    return tmp_path


def _extract_only(d: Path, only: Path) -> list:
    return ["extract", d / "frames", "-o", d / "store.zarr", "-b", TINY, "-q", "--only", only]


def _invoke_reading(d: Path, where: str, bad: Path):
    """Run the command that reads `bad` as `where` (annotations, submission, test list, --only list)."""
    if where == "annotations":
        return invoke(["evaluate", d / "sub.txt", bad, "--json", d / "score.json"])
    if where == "submission":
        return invoke(["evaluate", bad, d / "ann.txt", "--json", d / "score.json"])
    if where == "test-list":
        return invoke(["validate-submission", d / "sub.txt", "--test-list", bad])
    return invoke(_extract_only(d, bad))


@pytest.fixture
def frames_input(files):
    """A one-video frame folder (extract is never reached past the --only check)."""
    from PIL import Image

    v = files / "frames" / "v1"
    v.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(v / "00001.jpg")
    return files


@pytest.mark.parametrize("what", list(BIG))
@pytest.mark.parametrize("where", ["annotations", "test-list", "submission", "only-annotations", "only-test-list"])
def test_out_of_range_frame_numbers(frames_input, where, what):
    d, n = frames_input, BIG[what]
    name = f"v1/{n:05d}.jpg"
    bad = d / "bad.txt"
    if where in ("annotations", "only-annotations"):
        bad.write_text(ann_text(n))
    elif where in ("test-list", "only-test-list"):
        bad.write_text(mtl_text(n))
    else:
        bad.write_text(sub_text(n))
    before = tree_digest(d / "score.json", d / "store.zarr")
    r = _invoke_reading(d, where, bad)
    if where == "submission":
        assert_one_line(r, f"{bad}:3:", "image name", name)
    else:
        assert_one_line(r, f"{bad}:3:", f"frame number {n}", "out of range", f"max {MAX_FRAME}")
    assert tree_digest(d / "score.json", d / "store.zarr") == before


def test_frame_numbers_are_int64_up_to_the_max(tmp_path):
    from abaw.data.annotations import read_annotations
    from abaw.data.testlist import read_test_list

    (tmp_path / "a.txt").write_text(ann_text(MAX_FRAME))
    (tmp_path / "t.txt").write_text(mtl_text(MAX_FRAME))
    a, t = read_annotations(tmp_path / "a.txt"), read_test_list(tmp_path / "t.txt")
    assert a.frame.dtype == np.int64 and a.frame.tolist() == [1, MAX_FRAME]
    assert t.frame.dtype == np.int64 and t.frame.tolist() == [1, MAX_FRAME]


BAD_BYTES = b"v1/00001.jpg,0.1,0.2,3," + AU0.encode() + b"\nv1/\xff0002.jpg,0.1,0.2,3," + AU0.encode() + b"\n"


@pytest.mark.parametrize("where", ["annotations", "test-list", "submission", "only-annotations", "only-test-list"])
def test_non_utf8_text_files(frames_input, where):
    d = frames_input
    bad = d / "bad.txt"
    if "annotations" in where:
        head = ANNOTATION_HEADER.encode() + b"\n"
        bad.write_bytes(head + BAD_BYTES)
    elif "test-list" in where:
        head = SUBMISSION_HEADER.encode() + b"\n"
        bad.write_bytes(head + b"v1/00001.jpg,\nv1/\xff0002.jpg,\n")
    else:
        head = SUBMISSION_HEADER.encode() + b"\n"
        bad.write_bytes(head + BAD_BYTES)
    offset = bad.read_bytes().index(b"\xff")
    before = tree_digest(d / "score.json", d / "store.zarr")
    r = _invoke_reading(d, where, bad)
    assert_one_line(r, f"{bad}:3: not UTF-8 text (byte 0xff at offset {offset})")
    assert tree_digest(d / "score.json", d / "store.zarr") == before


@pytest.mark.parametrize("va,needle,title", [
    ("1.5", "outside [-1, 1]", "valence/arousal outside [-1, 1]: 1 rows, e.g. line 3: 1.5, 0.2"),
    (" 0.5", "no spaces", "non-numeric valence/arousal: 1 rows, e.g. line 3: ' 0.5', '0.2'"),
    ("0.5 ", "no spaces", "non-numeric valence/arousal: 1 rows, e.g. line 3: '0.5 ', '0.2'"),
    ("nan", "NaN or infinite", "NaN or infinite valence/arousal: 1 rows, e.g. line 3: nan, 0.2"),
    ("inf", "NaN or infinite", "NaN or infinite valence/arousal: 1 rows, e.g. line 3: inf, 0.2"),
])
def test_evaluate_and_validate_share_one_rule_set(files, va, needle, title):
    d = files
    bad = d / "bad_sub.txt"
    bad.write_text(sub_text(2, va=va))
    before = tree_digest(d / "score.json")
    r = invoke(["evaluate", bad, d / "ann.txt", "--json", d / "score.json"])
    assert_one_line(r, f"{bad}:3: valence/arousal", needle)
    assert tree_digest(d / "score.json") == before
    r = invoke(["validate-submission", bad, "--test-list", d / "MTL.txt"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.splitlines() == [f"invalid: {title}"]
    # the good file passes both
    assert invoke(["validate-submission", d / "sub.txt", "--test-list", d / "MTL.txt"]).exit_code == 0
    assert invoke(["evaluate", d / "sub.txt", d / "ann.txt"]).exit_code == 0


def test_expression_and_au_with_spaces_are_rejected_by_both(files):
    d = files
    bad = d / "bad_sub.txt"
    bad.write_text(f"{SUBMISSION_HEADER}\nv1/00001.jpg,0.1,0.2, 3,{AU0}\nv1/00002.jpg,0.1,0.2,3,{AU0}\n")
    assert_one_line(invoke(["evaluate", bad, d / "ann.txt"]), f"{bad}:2: expression", "no spaces")
    r = invoke(["validate-submission", bad, "--test-list", d / "MTL.txt"])
    assert r.exit_code == 1 and "non-integer expression" in r.output
    bad.write_text(f"{SUBMISSION_HEADER}\nv1/00001.jpg,0.1,0.2,3,{AU0[:-1]} 1\nv1/00002.jpg,0.1,0.2,3,{AU0}\n")
    assert_one_line(invoke(["evaluate", bad, d / "ann.txt"]), f"{bad}:2: AU values", "0 or 1")
    r = invoke(["validate-submission", bad, "--test-list", d / "MTL.txt"])
    assert r.exit_code == 1 and "AU values other than 0/1" in r.output


@pytest.mark.parametrize("value", ["!!python/object/apply:os.system ['echo hacked']",
                                   "!!python/name:os.system", "[1, 2", "{a: 1"])
def test_search_set_values_are_safe_yaml(tiny_synth, tmp_path, value):
    cache = tmp_path / "cache.zarr"
    cache.mkdir()
    out = tmp_path / "search"
    r = invoke(["search", "--cache", cache, "--data", tiny_synth, "--out", out, "--set", f"lr={value}", "--quiet"])
    assert_one_line(r, f"--set lr={value}", "not valid YAML")
    assert not out.exists()


# ---------------------------------------------------------------------------- videos


def _faststart(src: Path, dst: Path) -> None:
    """Remux `src` with the moov atom first (as streaming mp4s are): a cut copy still opens."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as o:
        s = i.streams.video[0]
        os_ = o.add_stream_from_template(s)
        for pkt in i.demux(s):
            if pkt.dts is not None:
                pkt.stream = os_
                o.mux(pkt)


def _remux(src: Path, dst: Path, fmt: str) -> None:
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w", format=fmt) as o:
        s = i.streams.video[0]
        os_ = o.add_stream_from_template(s)
        for pkt in i.demux(s):
            if pkt.dts is not None:
                pkt.stream = os_
                o.mux(pkt)


@pytest.fixture(scope="module")
def damaged_videos(tiny_synth_videos, tmp_path_factory):
    """name -> damaged copy of a synth clip (and the good clip itself)."""
    d = tmp_path_factory.mktemp("damaged")
    src = tiny_synth_videos / "videos" / "140.mp4"
    _faststart(src, d / "fs.mp4")
    _remux(src, d / "fs.mkv", "matroska")
    data = (d / "fs.mp4").read_bytes()
    mkv = (d / "fs.mkv").read_bytes()
    rng = np.random.default_rng(0)
    out = {"good": d / "good.mp4"}
    shutil.copy(src, out["good"])
    out["cut-mp4"] = d / "cut.mp4"
    out["cut-mp4"].write_bytes(data[: len(data) // 2])
    out["cut-mkv"] = d / "cut.mkv"
    out["cut-mkv"].write_bytes(mkv[: len(mkv) // 2])
    g = bytearray(data)
    m = len(g) // 2
    g[m:m + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    out["garbage-mp4"] = d / "garbage.mp4"
    out["garbage-mp4"].write_bytes(bytes(g))
    g = bytearray(mkv)
    m = len(g) // 2
    g[m:m + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    out["garbage-mkv"] = d / "garbage.mkv"
    out["garbage-mkv"].write_bytes(bytes(g))
    out["empty"] = d / "empty.mp4"
    out["empty"].write_bytes(b"")
    out["text"] = d / "notes.mp4"
    out["text"].write_text("this is not a video\n")
    return out


@pytest.mark.parametrize("name,kind,needle", [
    ("cut-mp4", "TruncatedVideoError", "truncated"),
    ("cut-mkv", "TruncatedVideoError", "truncated"),
    ("garbage-mp4", "DamagedVideoError", "damaged"),
    ("garbage-mkv", "DamagedVideoError", "damaged"),
    ("empty", "VideoError", "empty file (0 bytes)"),
    ("text", "VideoError", "cannot open video"),
])
def test_damaged_video_raises_after_the_good_frames(damaged_videos, name, kind, needle):
    from abaw.extract import video

    path = damaged_videos[name]
    got: list[int] = []
    with pytest.raises(video.VideoError) as ei:
        for ch in video.iter_frames(path, chunk=4):
            got += ch.frame.tolist()
    e = ei.value
    assert type(e).__name__ == kind
    msg = str(e)
    assert msg.startswith(f"{path}: ") and needle in msg and "\n" not in msg
    if isinstance(e, video.DamagedVideoError):
        assert 0 < e.decoded == len(got) and got == list(range(1, e.decoded + 1))
        assert e.expected > e.decoded
        with pytest.raises(type(e)):
            video.count_frames(path)


def test_good_videos_are_not_called_damaged(damaged_videos):
    from abaw.extract.video import count_frames, probe

    n = count_frames(damaged_videos["good"])
    assert n == probe(damaged_videos["good"]).header_frames


def test_extract_marks_damaged_videos_failed_and_completes_the_others(damaged_videos, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    store = tmp_path / "store.zarr"
    os.symlink(damaged_videos["good"], src / "good.mp4")
    args = ["extract", src, "-o", store, "-b", TINY, "-q", "--min-face", "40", "--detect-batch", "8"]
    r = invoke(args)
    assert r.exit_code == 0, r.output
    before = tree_digest(store)
    for name in ("cut-mp4", "cut-mkv", "garbage-mp4", "garbage-mkv", "empty", "text"):
        p = damaged_videos[name]
        os.symlink(p, src / f"{name}{p.suffix}")
    r = invoke(args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    failed = [ln for ln in r.output.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 6, r.output
    assert "1 already done, 6 failed" in r.output
    text = "\n".join(failed)
    assert "cut-mp4.mp4: truncated:" in text and "cut-mkv.mkv: truncated:" in text
    assert "garbage-mp4.mp4: damaged:" in text and "garbage-mkv.mkv: damaged:" in text
    assert "empty.mp4: empty file (0 bytes)" in text and "text.mp4: cannot open video" in text
    from abaw.cache.store import FeatureStore

    assert FeatureStore(store).videos() == ["good"]  # nothing of the damaged ones is stored
    after = {k: v for k, v in tree_digest(store).items() if "/.staging" not in k}
    assert after == {k: v for k, v in before.items() if "/.staging" not in k}


# ---------------------------------------------------------------------------- loaders


def _corrupt(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_safe_loaders_name_the_file(tmp_path, kind):
    import torch
    from safetensors.torch import save_file

    from abaw.safeload import load_npz, load_safetensors, load_torch_state

    t = {"w": torch.arange(6.0).reshape(2, 3)}
    st, pt, npz = tmp_path / "w.safetensors", tmp_path / "last.pt", tmp_path / "out.npz"
    save_file(t, st)
    torch.save(t, pt)
    np.savez(npz, a=np.arange(3))
    assert torch.equal(load_safetensors(st)["w"], t["w"]) and torch.equal(load_torch_state(pt)["w"], t["w"])
    assert load_npz(npz)["a"].tolist() == [0, 1, 2]
    for p, fn in ((st, load_safetensors), (pt, load_torch_state), (npz, load_npz)):
        _corrupt(p, kind)
        with pytest.raises(AbawError) as ei:
            fn(p)
        msg = str(ei.value)
        assert msg.startswith(f"{p}: not a readable") and "\n" not in msg


def test_pickles_do_not_run(tmp_path):
    import pickle

    import torch

    from abaw.safeload import load_npz, load_torch_state

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "state.pt", "wb") as f:
        pickle.dump({"x": Boom()}, f)
    torch.save({"x": Boom()}, tmp_path / "best.pt")
    for name in ("state.pt", "best.pt"):
        with pytest.raises(AbawError, match=rf"{name}: not a readable torch file .*weights_only=True"):
            load_torch_state(tmp_path / name)
    np.savez(tmp_path / "val_outputs.npz", videos=np.array([Boom()], dtype=object))
    with pytest.raises(AbawError, match=r"val_outputs.npz: holds Python objects"):
        load_npz(tmp_path / "val_outputs.npz")
    assert not (tmp_path / "pwned").exists()


def test_corrupt_safetensors_weights_in_extract(frames_input):
    d = frames_input
    w = d / "w.safetensors"
    w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    r = invoke(["extract", d / "frames", "-o", d / "store.zarr", "-b",
                f"timm:test_efficientnet_gn?size=64&pretrained=0&weights={w}", "-q"])
    assert_one_line(r, f"{w}: not a readable .safetensors file")


# ---------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_split):
    """A tiny finished `train-heads` run on synthetic features (one epoch)."""
    from abaw.cache.store import FeatureStore
    from abaw.data.annotations import write_annotations
    from abaw.data.labels import image_name

    d = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    fs = FeatureStore(d / "cache.zarr", "a")
    proj = rng.standard_normal((22, 8)).astype(np.float32)
    for split, prefix, n in (("training", "t", 3), ("validation", "v", 2)):
        ann = synthetic_split(fs, prefix, n, 40, proj, 1.0, rng)
        names = [image_name(ann.videos[v], int(f)) for v, f in zip(ann.video_idx, ann.frame)]
        write_annotations(d / f"{split}_set_annotations.txt", names, ann.va, ann.expr, ann.au)
    args = ["train-heads", "--cache", d / "cache.zarr", "--data", d, "--out", d / "run", "--backbone", "synth",
            "--d-model", "16", "--window", "8", "--epochs", "1", "--min-steps", "0", "--quiet", "--no-smoothing", "--no-thresholds"]
    r = invoke(args)
    assert r.exit_code == 0, r.output
    return d, args


def test_report_with_an_object_array_in_val_outputs(finished_run, tmp_path):
    d, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    np.savez(run / "val_outputs.npz", videos=np.array([{"a": 1}], dtype=object))
    before = tree_digest(run)
    r = invoke(["report", run, "--out", tmp_path / "report", "--val-ann", d / "validation_set_annotations.txt"])
    assert_one_line(r, f"{run / 'val_outputs.npz'}: holds Python objects")
    assert tree_digest(run) == before


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_resume_with_a_corrupt_last_pt(finished_run, tmp_path, kind):
    import torch

    d, args = finished_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    (run / "result.json").unlink()  # an interrupted run: resumes from last.pt
    torch.save({"model": {"w": torch.zeros(3)}}, run / "last.pt")
    _corrupt(run / "last.pt", kind)
    before = tree_digest(run)
    out_args = [str(a) for a in args]
    out_args[out_args.index("--out") + 1] = str(run)
    r = invoke(out_args + ["--resume"])
    assert_one_line(r, f"{run / 'last.pt'}: cannot read the training state")
    assert tree_digest(run) == before


@pytest.mark.parametrize("name", ["best.pt"])
def test_corrupt_checkpoint_in_report(finished_run, tmp_path, name):
    d, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    _corrupt(run / name, "truncated")
    before = tree_digest(run)
    from abaw.pipeline.train.run import load_checkpoint

    with pytest.raises(AbawError, match=rf"{name}: cannot read checkpoint"):
        load_checkpoint(run / name)
    assert tree_digest(run) == before


@pytest.mark.parametrize("name", ["config.json", "result.json", "postprocess.json", "metrics.json"])
@pytest.mark.parametrize("kind", ["truncated", "binary"])
def test_report_with_a_damaged_json_file(finished_run, tmp_path, name, kind):
    d, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2] if kind == "truncated" else b'{"a": "\xff\xfe"}')
    before = tree_digest(run)
    r = invoke(["report", run, "--out", tmp_path / "report", "--val-ann", d / "validation_set_annotations.txt"])
    reason = "not valid JSON" if kind == "truncated" else "not UTF-8 text (byte 0xff at offset 7)"
    assert_one_line(r, f"{run / name}:", reason)
    assert tree_digest(run) == before
