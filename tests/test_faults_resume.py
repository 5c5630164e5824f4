"""Fault campaign (issue 11 §2): a resume or rerun trusts the data, not the folder.

`train-heads --resume`, `search` reruns and `finetune` resumes record the identity of their
data (a SHA-256 of each annotation set's labels, the fingerprint of each feature key) and
refuse other data with a one-line diff, leaving the run folder unchanged.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_faults import assert_one_line, finished_run, invoke, tree_digest  # noqa: F401  (fixture)

from abaw.errors import AbawError
from abaw.rundir import check_identity, data_identity, identity_diff

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def heads_run(finished_run):
    """A cache, annotation files and a finished one-epoch `train-heads` run (test_faults' fixture)."""
    return finished_run[0]


def _args(d, *extra):
    return ["train-heads", "--cache", d / "cache.zarr", "--data", d, "--out", d / "run", "--backbone", "synth",
            "--d-model", "16", "--window", "8", "--epochs", "1", "--min-steps", "0", "--quiet", "--no-smoothing", "--no-thresholds",
            *extra]


def _flip_expr(src, dst):
    """`dst`: the annotation file `src` with every valid expression label changed."""
    lines = src.read_text().splitlines()
    out = [lines[0]]
    for ln in lines[1:]:
        f = ln.split(",")
        if f[3] != "-1":
            f[3] = str((int(f[3]) + 1) % 8)
        out.append(",".join(f))
    dst.write_text("\n".join(out) + "\n")


def _rewrite_features(store, dim: int, spec: str):
    from abaw.cache.store import FeatureStore

    fs = FeatureStore(store, "a")
    rng = np.random.default_rng(1)
    for v in fs.videos():
        n = len(fs.read_index(v).frame)
        fs.write_features(v, "synth", rng.standard_normal((n, dim)).astype(np.float32),
                          {"spec": spec, "dim": dim, "preprocess": {}, "weights_sha256": "0"}, overwrite=True)
    fs.close()


CASES = {
    "other-val-file": ("val annotations sha256", "(other_val.txt; was validation_set_annotations.txt)"),
    "flipped-train-labels": ("train annotations sha256", "(training_set_annotations.txt)"),
    "other-features-same-key": ("features 'synth': spec 'synthetic:synth' != 'synthetic:other'",),
    "wider-features": ("features 'synth': dim 8 != 12",),
    "wider-features-interrupted": ("features 'synth': dim 8 != 12",),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_heads_resume_refuses_other_data(heads_run, tmp_path, case):
    d = tmp_path / "d"
    shutil.copytree(heads_run, d)
    extra: list = []
    if case == "other-val-file":
        _flip_expr(d / "validation_set_annotations.txt", d / "other_val.txt")
        extra = ["--val-ann", d / "other_val.txt"]
    elif case == "flipped-train-labels":
        _flip_expr(d / "training_set_annotations.txt", d / "training_set_annotations.txt")
    elif case == "other-features-same-key":
        _rewrite_features(d / "cache.zarr", 8, "synthetic:other")
    else:
        _rewrite_features(d / "cache.zarr", 12, "synthetic:synth")
        if case == "wider-features-interrupted":  # resumes from last.pt: no `size mismatch` traceback
            (d / "run" / "result.json").unlink()
    before = tree_digest(d / "run")
    r = invoke(_args(d, "--resume", *extra))
    line = assert_one_line(r, f"{d / 'run'}: cannot resume, the data differs: ", *CASES[case])
    assert "use --overwrite" in line
    assert tree_digest(d / "run") == before
    # the same data still resumes (returns the finished run)
    if case == "other-val-file":
        assert invoke(_args(d, "--resume")).exit_code == 0


def test_train_heads_records_the_identity(heads_run):
    from abaw.data.annotations import read_annotations
    from abaw.io import read_json

    ident = read_json(heads_run / "run" / "data.json")["identity"]
    val = read_annotations(heads_run / "validation_set_annotations.txt")
    train = read_annotations(heads_run / "training_set_annotations.txt")
    assert ident["annotations"]["val"]["files"] == ["validation_set_annotations.txt"]
    assert ident["annotations"]["val"]["rows"] == len(val)
    assert ident["features"]["synth"]["dim"] == 8
    # the labels' content, not the file: the same labels selected in memory hash alike, and
    # fingerprint fields that do not define the features (library versions) are left out
    fp = {"spec": "synthetic:synth", "dim": 8, "preprocess": {}, "weights_sha256": "0", "versions": {"x": 1}}
    again = data_identity({"train": train.select_videos(list(train.videos)), "val": val}, {"synth": fp})
    assert identity_diff(ident, again) == []


def test_identity_diff_and_check():
    a = {"annotations": {"val": {"sha256": "ab" * 32, "rows": 3, "files": ["val.txt"]}},
         "features": {"k": {"spec": "s", "dim": 6, "preprocess": None, "weights_sha256": "0"}}}
    b = {"annotations": {"val": {"sha256": "cd" * 32, "rows": 3, "files": ["val.txt"]}},
         "features": {"k": {"spec": "s", "dim": 8, "preprocess": None, "weights_sha256": "0"}, "j": {}}}
    assert identity_diff(a, b) == ["val annotations sha256 abababab.. != cdcdcdcd.. (val.txt)",
                                   "features 'k': dim 6 != 8", "features 'j' not in the run"]
    assert identity_diff(a, a) == []
    check_identity("runs/r1", None, b)  # runs recorded before identities: not checked
    with pytest.raises(AbawError, match=r"^runs/r1: cannot resume, the data differs: val annotations sha256 "
                                        r"abababab.. != cdcdcdcd.. \(val.txt\); features 'k': dim 6 != 8 "
                                        r"\(and 1 more\); use --overwrite"):
        check_identity("runs/r1", a, b)


def test_search_rerun_refuses_other_data(heads_run, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(heads_run, d)
    args = ["search", "--cache", d / "cache.zarr", "--data", d, "--out", d / "search", "--tasks", "au",
            "--set", "d_model=16", "--set", "window=8", "--set", "epochs=1", "--set", "min_steps=0", "--quiet"]
    r = invoke(args)
    assert r.exit_code == 0, r.output
    _flip_expr(d / "validation_set_annotations.txt", d / "validation_set_annotations.txt")
    before = tree_digest(d / "search")
    r = invoke(args)
    assert_one_line(r, f"{d / 'search'}: cannot rerun the search here, the data differs: val annotations sha256",
                    "(validation_set_annotations.txt)")
    assert tree_digest(d / "search") == before


def test_legacy_run_without_identity_refuses_other_widths(heads_run, tmp_path):
    """A run folder written before data identities existed: the widths in data.json are compared."""
    from abaw.io import read_json, write_json

    d = tmp_path / "d"
    shutil.copytree(heads_run, d)
    data = read_json(d / "run" / "data.json")
    data.pop("identity")
    write_json(d / "run" / "data.json", data)
    _rewrite_features(d / "cache.zarr", 12, "synthetic:synth")
    before = tree_digest(d / "run")
    r = invoke(_args(d, "--resume"))
    assert_one_line(r, f"{d / 'run'}: cannot resume, the data differs: ", "features 'synth': dim 8 != 12")
    assert tree_digest(d / "run") == before


def test_long_commands_write_their_result_as_json(heads_run, tmp_path):
    """`--json FILE` on train-heads (here: the finished run returned by --resume)."""
    import json

    d = tmp_path / "d"
    shutil.copytree(heads_run, d)
    r = invoke(_args(d, "--resume", "--json", d / "result.json"))
    assert r.exit_code == 0, r.output
    res = json.loads((d / "result.json").read_text())
    assert res["path"] == str(d / "run") and res["steps"][0]["step"] == "raw" and "honest" in res
