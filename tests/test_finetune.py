"""`abaw finetune`: each task learns, resume is exact, DDP matches one process, and the
checkpoint is a backbone (`ckpt:DIR`) whose features reproduce the validation metric."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from abaw.cli import main
from abaw.config import from_dict, to_dict
from abaw.data.annotations import read_annotations
from abaw.data.synth import SynthConfig, generate
from abaw.errors import AbawError
from abaw.extract.backbones import FACE_MEAN, create_backbone
from abaw.pipeline.finetune import AugmentConfig, FinetuneConfig, finetune
from abaw.pipeline.finetune.data import EpochSampler, FaceImageDataset, read_rgb
from abaw.pipeline.finetune.model import (
    FinetuneModel,
    TaskHead,
    build_backbone,
    param_groups,
    with_options,
)
from abaw.heads.losses import va_loss
from abaw.pipeline.finetune.tasks import create_task
from abaw.schedule import cosine_with_warmup
from abaw.metrics import ccc

ROOT = Path(__file__).resolve().parents[1]
TINY = "timm:test_efficientnet_gn?pretrained=0&size=64"
# Chosen so every task clearly beats the untrained model in 3 short epochs (~580 frames).
TRAIN = dict(epochs=3, batch_size=16, lr=3e-4, head_lr=1e-2, warmup_epochs=0.5, drop_path=0.0,
             class_weights="balanced", patience=3, seed=0)
MARGIN = {"va": 0.25, "expr": 0.1, "au": 0.04}  # measured gains: ~0.5, ~0.2, ~0.1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ft_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "synth"
    generate(out, SynthConfig(seed=3, train_videos=10, val_videos=4, test_videos=1, min_frames=50,
                              max_frames=70, videos=False, profile="dense"), jobs=1, progress=False)
    return out


def make_cfg(data: Path, task: str, backbone: str = TINY, **kw) -> FinetuneConfig:
    return FinetuneConfig(task=task, backbone=backbone, data=str(data / "cropped_aligned"),
                          train_ann=str(data / "training_set_annotations.txt"),
                          val_ann=str(data / "validation_set_annotations.txt"), **{**TRAIN, **kw})


@pytest.fixture(scope="module")
def runs(ft_data, tmp_path_factory):
    """Uninterrupted single-process runs, made once and shared by the tests."""
    done: dict[str, tuple[Path, dict]] = {}

    def get(task: str) -> tuple[Path, dict]:
        if task not in done:
            out = tmp_path_factory.mktemp("runs") / task
            done[task] = out, finetune(make_cfg(ft_data, task), out, workers=0, progress=False)
        return done[task]

    return get


def val_frames(data: Path, task: str):
    ann = read_annotations(data / "validation_set_annotations.txt")
    t = create_task(task)
    rows = np.flatnonzero(t.valid(ann))
    imgs = np.stack([read_rgb(data / "cropped_aligned" / ann.videos[ann.video_idx[r]] / f"{ann.frame[r]:05d}.jpg")
                     for r in rows])
    return t, torch.from_numpy(imgs), t.targets(ann)[rows]


def check_run_folder(out: Path, summary: dict, task: str, data: Path) -> dict:
    """The run folder is complete, and ckpt:OUT + head reproduce the recorded val metric."""
    for name in ("finetune_config.json", "state.pt", "history.json", "learning_curve.png", "backbone.json",
                 "backbone.safetensors", "head.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    cfg = from_dict(FinetuneConfig, json.loads((out / "finetune_config.json").read_text()))
    assert cfg.task == task
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["task"] == task and meta["epoch"] == summary["best_epoch"]
    assert meta["metric"]["value"] == pytest.approx(summary["best_metric"])
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist["history"]] == list(range(summary["epochs_run"] + 1))

    bb = create_backbone(f"ckpt:{out}")
    t, imgs, y = val_frames(data, task)
    from safetensors.torch import load_file

    head = load_file(out / "head.safetensors")
    feats = bb(imgs)
    outs = (feats @ head["fc.weight"].T + head["fc.bias"]).numpy()
    metric, _ = t.score(outs, y)
    assert metric == pytest.approx(summary["best_metric"], abs=2e-3)
    return meta


# ---------------------------------------------------------------- every task learns


@pytest.mark.parametrize("task", ["expr", "au"])
def test_finetune_improves_over_untrained(task, runs, ft_data):
    out, s = runs(task)
    assert s["done"] and s["epochs_run"] == 3 and s["processes"] == 1
    assert s["best_metric"] > s["untrained_metric"] + MARGIN[task], s["history"]
    losses = [h["train_loss"] for h in s["history"][1:]]
    assert losses[-1] < losses[0]
    check_run_folder(out, s, task, ft_data)


def test_cli_finetune_va_face_norm_workers_and_feature_store(ft_data, tmp_path):
    """VA through the CLI (face normalisation, a data-loader worker), then FeatureStore writes."""
    out = tmp_path / "va"
    args = ["finetune", "--task", "va", "--backbone", "timm:test_efficientnet_gn?pretrained=0", "--size", "64",
            "--norm", "face", "--data", str(ft_data / "cropped_aligned"),
            "--train-ann", str(ft_data / "training_set_annotations.txt"),
            "--val-ann", str(ft_data / "validation_set_annotations.txt"), "--out", str(out),
            "--epochs", "3", "--batch-size", "16", "--lr", "3e-4", "--head-lr", "1e-2", "--warmup-epochs", "0.5",
            "--drop-path", "0", "--workers", "1", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "best P_VA" in r.output and f"ckpt:{out}" in r.output
    s = json.loads((out / "history.json").read_text())
    assert s["best_metric"] > s["untrained_metric"] + MARGIN["va"], s["history"]
    meta = check_run_folder(out, s, "va", ft_data)
    assert tuple(meta["preprocess"]["mean"]) == FACE_MEAN and meta["preprocess"]["input_size"] == 64

    # the checkpoint as a cache backbone: features + fingerprint into the Zarr store
    from abaw.cache.store import FeatureStore

    bb = create_backbone(f"ckpt:{out}")
    assert bb.preprocess.mean == FACE_MEAN and bb.dim == 256
    fp = bb.fingerprint()
    assert fp["spec"] == f"ckpt:{out}" and fp["source"]["task"] == "va"
    assert fp["weights_sha256"] == meta["weights_sha256"]
    assert fp["source"]["weights_file_sha256"] == hashlib.sha256((out / "backbone.safetensors").read_bytes()).hexdigest()
    video = sorted(os.listdir(ft_data / "cropped_aligned"))[0]
    files = sorted((ft_data / "cropped_aligned" / video).iterdir())
    frames = np.array([int(p.stem) for p in files])
    feats = bb(torch.from_numpy(np.stack([read_rgb(p) for p in files]))).numpy()
    store = FeatureStore(tmp_path / "cache", "a")
    store.write_video(video, frames, np.full(len(frames), np.nan), np.ones(len(frames), bool), attrs={})
    store.write_features(video, bb.key, feats, fp)
    back = FeatureStore(tmp_path / "cache", "r")
    np.testing.assert_allclose(back.read_features(video, bb.key), feats, rtol=2e-3, atol=2e-3)
    assert back.fingerprint(video, bb.key)["source"]["checkpoint"] == str(out.resolve())

    # rerunning the same command finds the run finished and does not train again
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 0 and r2.output == r.output


# ---------------------------------------------------------------- resume, DDP


def test_resume_after_interruption_gives_the_uninterrupted_result(runs, ft_data, tmp_path):
    ref_out, ref = runs("expr")
    out = tmp_path / "expr"
    cfg = make_cfg(ft_data, "expr")

    def stop(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, out, workers=0, progress=False, on_epoch_end=stop)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and not state["done"]
    seen = []
    s = finetune(cfg, out, workers=0, progress=False, on_epoch_end=lambda r: seen.append(r["epoch"]))
    assert seen == [2, 3]  # resumed after epoch 1
    assert [h["val_metric"] for h in s["history"]] == [h["val_metric"] for h in ref["history"]]
    assert [h["train_loss"] for h in s["history"]] == [h["train_loss"] for h in ref["history"]]
    a = json.loads((out / "backbone.json").read_text())
    b = json.loads((ref_out / "backbone.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]

    # other settings, or changed annotations, in the same folder: refused, nothing touched
    before = (out / "state.pt").read_bytes()
    with pytest.raises(AbawError, match="other settings .*lr"):
        finetune(make_cfg(ft_data, "expr", lr=1e-3), out, workers=0, progress=False)
    ann = tmp_path / "val.txt"
    shutil.copy(ft_data / "validation_set_annotations.txt", ann)
    moved = FinetuneConfig(**{**cfg.__dict__, "val_ann": str(ann)})
    shutil.copy(out / "finetune_config.json", tmp_path / "cfg.json")
    (out / "finetune_config.json").write_text(json.dumps(to_dict(moved)))
    with ann.open("a") as f:
        f.write("\n")  # same labels, different bytes
    with pytest.raises(AbawError, match=r"cannot resume, the data differs: val annotation file sha256 .* "
                                        r"\(val.txt; same labels\)"):
        finetune(moved, out, workers=0, progress=False)
    shutil.copy(tmp_path / "cfg.json", out / "finetune_config.json")
    assert (out / "state.pt").read_bytes() == before
    assert finetune(cfg, out, workers=0, progress=False)["history"] == s["history"]  # finished: no training


def test_torchrun_ddp_two_processes_match_one(runs, ft_data, tmp_path):
    """2 CPU processes (gloo) x batch 8 == 1 process x batch 16 for a batch-mean loss (AU's BCE;
    EXPR's class-weighted CE and VA's CCC are not means over frames)."""
    _, ref = runs("au")
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this python")
    cmd = [str(torchrun), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "abaw", "finetune",
           "--task", "au", "--backbone", TINY, "--data", str(ft_data / "cropped_aligned"),
           "--train-ann", str(ft_data / "training_set_annotations.txt"),
           "--val-ann", str(ft_data / "validation_set_annotations.txt"), "--out", str(out),
           "--epochs", "3", "--batch-size", "8", "--lr", "3e-4", "--head-lr", "1e-2", "--warmup-epochs", "0.5",
           "--drop-path", "0", "--class-weights", "balanced", "--workers", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("best P_AU") == 1  # only rank 0 reports
    s = json.loads((out / "history.json").read_text())
    assert s["processes"] == 2 and s["steps_per_epoch"] == ref["steps_per_epoch"]
    for a, b in zip(s["history"], ref["history"], strict=True):
        assert a["val_metric"] == pytest.approx(b["val_metric"], abs=1e-3)
        if b["train_loss"] is not None:
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    create_backbone(f"ckpt:{out}")


# ---------------------------------------------------------------- errors and building blocks


def test_bad_inputs_are_one_line_errors(ft_data, tmp_path, runs):
    lines = (ft_data / "training_set_annotations.txt").read_text().splitlines()
    ann = tmp_path / "train.txt"
    ann.write_text("\n".join(lines + ["ghost_video/00007.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0"]) + "\n")
    cfg = make_cfg(ft_data, "expr")
    bad = FinetuneConfig(**{**cfg.__dict__, "train_ann": str(ann)})
    with pytest.raises(AbawError, match=r"ghost_video/00007\.jpg: image not found \(listed in .*train\.txt:\d+"):
        finetune(bad, tmp_path / "o1", workers=0, progress=False)
    # an unreadable JPEG met inside a data-loader worker: one line naming the file
    data = tmp_path / "data"
    shutil.copytree(ft_data / "cropped_aligned", data)
    val = read_annotations(ft_data / "validation_set_annotations.txt")
    r = int(np.flatnonzero(val.expr_valid)[0])
    victim = data / val.videos[val.video_idx[r]] / f"{val.frame[r]:05d}.jpg"
    victim.write_bytes(b"not a jpeg")
    broken = FinetuneConfig(**{**cfg.__dict__, "data": str(data)})
    with pytest.raises(AbawError) as e:
        finetune(broken, tmp_path / "o2", workers=1, progress=False)
    assert str(e.value).startswith(f"{victim}: cannot read image") and "\n" not in str(e.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(AbawError, match="not a fine-tuning run folder"):
        finetune(cfg, tmp_path / "other", workers=0, progress=False)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    with pytest.raises(AbawError, match="batch_size must be >= 1"):
        FinetuneConfig(**{**cfg.__dict__, "batch_size": 0}).validate()
    with pytest.raises(AbawError, match="unknown options"):
        build_backbone("timm:test_vit?pretrained=0&bogus=1")
    with pytest.raises(AbawError, match="conflicts with --norm"):
        with_options("timm:x?norm=imagenet", norm="face")
    assert with_options("timm:x?size=64", norm="face", weights=None) == "timm:x?size=64&norm=face"

    # checkpoints: tampered weights, options, missing folder, a weights name leaving the folder
    src, _ = runs("expr")
    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("backbone.json", "backbone.safetensors", "head.safetensors"):
        shutil.copy(src / name, ck / name)
    with pytest.raises(AbawError, match="only key= is allowed"):
        create_backbone(f"ckpt:{ck}?size=112")
    assert create_backbone(f"ckpt:{ck}?key=expr_ft").key == "expr_ft"
    again = build_backbone(f"ckpt:{ck}")  # a checkpoint can start another run
    from abaw.extract.backbones import state_dict_sha256

    assert state_dict_sha256(again.model.state_dict()) == json.loads((ck / "backbone.json").read_text())["weights_sha256"]
    assert again.preprocess == create_backbone(f"ckpt:{ck}").preprocess
    with pytest.raises(AbawError, match="not a fine-tuned checkpoint"):
        create_backbone(f"ckpt:{tmp_path / 'nothing'}")
    meta = json.loads((ck / "backbone.json").read_text())
    (ck / "backbone.json").write_text(json.dumps({**meta, "weights": "../backbone.safetensors"}))
    with pytest.raises(AbawError, match="file name inside the folder"):
        create_backbone(f"ckpt:{ck}")
    (ck / "backbone.json").write_text(json.dumps(meta))
    data = bytearray((ck / "backbone.safetensors").read_bytes())
    data[-1] ^= 1
    (ck / "backbone.safetensors").write_bytes(bytes(data))
    with pytest.raises(AbawError, match="does not match"):
        create_backbone(f"ckpt:{ck}")


def test_sampler_shards_and_augmentation_are_seeded(ft_data):
    a = EpochSampler(10, seed=1, rank=0, world=3)
    b = EpochSampler(10, seed=1, rank=1, world=3)
    c = EpochSampler(10, seed=1, rank=2, world=3)
    shards = [list(s) for s in (a, b, c)]
    assert [len(x) for x in shards] == [4, 4, 4] and len(a) == 4
    assert set().union(*map(set, shards)) == set(range(10))  # all items, 2 repeated as padding
    a.set_epoch(1)
    assert all(k // 10 == 1 for k in a) and sorted(k % 10 for k in a) != sorted(shards[0])
    ev = [list(EpochSampler(10, shuffle=False, rank=r, world=3, pad=False)) for r in range(3)]
    assert sorted(sum(ev, [])) == list(range(10))
    assert len(list(EpochSampler(10, seed=0, samples=25))) == 25

    ann = read_annotations(ft_data / "training_set_annotations.txt")
    rows = np.flatnonzero(ann.expr_valid)[:4]
    bb = build_backbone(TINY)
    ds = FaceImageDataset(ft_data / "cropped_aligned", ann, rows, ann.expr, bb.preprocess, train=True,
                      augment=AugmentConfig(), seed=0)
    x1, y1, i1 = ds[len(ds) * 2 + 1]
    torch.manual_seed(123)
    x2, _, _ = ds[len(ds) * 2 + 1]
    x3, _, _ = ds[len(ds) * 3 + 1]
    assert x1.dtype == torch.uint8 and x1.shape == (3, 64, 64) and i1 == 1 and int(y1) == ann.expr[rows[1]]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    ev = FaceImageDataset(ft_data / "cropped_aligned", ann, rows, ann.expr, bb.preprocess, train=False)
    xe, _, _ = ev[0]
    img = torch.from_numpy(read_rgb(ev.path(0)))
    torch.testing.assert_close(xe, bb.preprocess(img[None])[0])  # validation = extraction preprocessing


def test_losses_groups_schedule_and_vit_resize(tmp_path):
    p, t = torch.rand(50, 2) * 2 - 1, torch.rand(50, 2) * 2 - 1
    ref = 1 - (ccc(p[:, 0].numpy(), t[:, 0].numpy()) + ccc(p[:, 1].numpy(), t[:, 1].numpy())) / 2
    assert float(va_loss(p, t, torch.ones(50, dtype=torch.bool))) == pytest.approx(ref, abs=1e-5)
    va = create_task("va")
    y = t.clone()
    y[:10] = -5.0  # invalid rows are ignored
    assert float(va.loss(torch.atanh(p.clamp(-0.99, 0.99)), y)) == pytest.approx(
        float(va_loss(p.clamp(-0.99, 0.99)[10:], t[10:], torch.ones(40, dtype=torch.bool))), abs=1e-5)

    f = cosine_with_warmup(100, 10, 0.01)
    lrs = [f(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[-1] == pytest.approx(0.01, abs=1e-3)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))

    # a ViT at another input size: local 160-px weights load with the position embedding resampled
    vit = build_backbone("timm:test_vit?pretrained=0")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, tmp_path / "vit.safetensors")
    small = build_backbone(f"timm:test_vit?size=64&weights={tmp_path / 'vit.safetensors'}")
    assert small.model_kwargs == {"img_size": 64} and small.preprocess.input_size == 64
    assert small.model(torch.zeros(2, 3, 64, 64)).shape == (2, small.dim)
    m = FinetuneModel(small.model, TaskHead(small.dim, 8))
    groups = param_groups(m, lr=1e-3, head_lr=1e-2, weight_decay=0.05, layer_decay=0.5)
    lrs = sorted({g["lr"] for g in groups if g["name"] != "head"})
    assert max(lrs) == pytest.approx(1e-3) and min(lrs) < 1e-3 * 0.5 ** 3  # decays down to the embedding
    assert {g["lr"] for g in groups if g["name"] == "head"} == {1e-2}
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in m.parameters())
    assert all(g["weight_decay"] == 0 for g in groups for p in g["params"] if p.ndim == 1)


def test_gradient_accumulation_equals_one_big_batch():
    """2 micro-batches of 8 with accumulation == one batch of 16 (AU's BCE is a mean over frames)."""
    from abaw.extract.backbones import Preprocess
    from abaw.pipeline.finetune.train import TrainStep

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (16, 12), generator=g).float()
    params = []
    for accum in (1, 2):
        torch.manual_seed(0)
        bb = build_backbone("timm:test_efficientnet_gn?pretrained=0&size=32")
        m = FinetuneModel(bb.model, TaskHead(bb.dim, 12))
        opt = torch.optim.SGD(m.parameters(), lr=1.0)  # update = -gradient (Adam would hide small errors)
        step = TrainStep(m, create_task("au"), opt, None, torch.device("cpu"), Preprocess(input_size=32),
                         amp=False, channels_last=False, accum_steps=accum, grad_clip=1.0)
        m.train()
        for k in range(accum):
            sl = slice(k * 16 // accum, (k + 1) * 16 // accum)
            step.micro(x[sl], y[sl], sync=k == accum - 1)
        params.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=1e-5)
    assert not torch.equal(params[0], torch.cat([p.detach().flatten() for p in FinetuneModel(
        build_backbone("timm:test_efficientnet_gn?pretrained=0&size=32").model, TaskHead(256, 12)).parameters()]))


def test_checkpoint_round_trip_with_batchnorm(tmp_path):
    """A BatchNorm model (0-d num_batches_tracked buffers) exports and reloads as ckpt:DIR."""
    from abaw.extract.ckpt import write_checkpoint

    torch.manual_seed(0)
    bb = build_backbone("timm:test_resnet?pretrained=0&size=32&norm=face")
    bb.model.train()
    bb.model(torch.randn(4, 3, 32, 32))  # move the running statistics away from their init
    write_checkpoint(tmp_path, bb.model.state_dict(), TaskHead(bb.dim, 2).state_dict(), timm_model=bb.timm_model,
                     model_kwargs=bb.model_kwargs, dim=bb.dim, preprocess=bb.preprocess, task="va",
                     head={"type": "linear", "out_dim": 2, "output": "tanh"}, extra={"epoch": 1})
    ck = create_backbone(f"ckpt:{tmp_path}")
    x = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8)
    bb.model.eval()
    with torch.no_grad():
        ref = bb.model(bb.preprocess(x))
    torch.testing.assert_close(ck(x), ref)
    assert ck.preprocess.mean == FACE_MEAN and ck.fingerprint()["source"]["epoch"] == 1
    from abaw.extract.backbones import state_dict_sha256

    assert ck.weights_sha256 == state_dict_sha256(ck.model.state_dict())  # recorded == recomputed


def test_checkpoint_extracts_through_abaw_extract(runs, ft_data, tmp_path):
    """The fine-tuned checkpoint is a first-class backbone: `abaw extract -b ckpt:DIR` caches its features."""
    from abaw.cache.store import FeatureStore

    out, summary = runs("expr")
    store = tmp_path / "ckpt_cache.zarr"
    r = CliRunner().invoke(main, ["extract", str(ft_data / "cropped_aligned"), "-o", str(store), "-b", f"ckpt:{out}"])
    assert r.exit_code == 0, r.output
    bb = create_backbone(f"ckpt:{out}")
    fs = FeatureStore(store)
    video = fs.videos()[0]
    fp = fs.fingerprint(video, bb.key)
    assert fp["spec"] == f"ckpt:{out}" and fp["weights_sha256"] == bb.weights_sha256
    assert fp["source"]["task"] == "expr"  # the cache fingerprint names the checkpoint
    idx = fs.read_index(video)
    imgs = np.stack([read_rgb(ft_data / "cropped_aligned" / video / f"{f:05d}.jpg") for f in idx.frame])
    direct = bb(torch.from_numpy(imgs)).numpy()
    np.testing.assert_allclose(fs.read_features(video, bb.key).astype(np.float32), direct, atol=2e-2, rtol=1e-2)
