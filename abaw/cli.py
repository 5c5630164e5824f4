"""The `abaw` command line: thin click wrappers over the library.

Heavy imports (torch, timm, zarr) happen inside the commands, so `abaw --help` is fast.
Any `AbawError` becomes a one-line `error: ...` message and exit status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from abaw import __version__
from abaw.errors import AbawError


class AbawGroup(click.Group):
    """Click group that reports library errors on one line with a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AbawError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # keep the order of definition (the workflow order)


@click.group(cls=AbawGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="abaw")
def main() -> None:
    """Multi-task facial affect analysis for ABAW: valence-arousal (VA), 8 expressions
    (EXPR) and 12 action units (AU) from cached frozen-backbone features.

    Workflow: synth (or real data) -> extract -> train-heads -> search -> predict ->
    validate-submission -> evaluate -> report.  `abaw demo` runs it all.
    """


# ---------------------------------------------------------------- foundation: data + metric


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same dataset).")
@click.option("--train-videos", default=24, show_default=True, help="Person tracks in the training split.")
@click.option("--val-videos", default=8, show_default=True, help="Person tracks in the validation split.")
@click.option("--test-videos", default=6, show_default=True, help="Person tracks in the test split.")
@click.option("--profile", default="s-aff-wild2", show_default=True,
              help="Label statistics: s-aff-wild2 (the real sparse labelling) or dense (every face frame).")
@click.option("--min-frames", type=int, help="Fewest labelled frames per track [s-aff-wild2: 2, dense: 100].")
@click.option("--max-frames", type=int, help="Most labelled frames per track [s-aff-wild2: 100, dense: 200].")
@click.option("--all-crops", is_flag=True, help="Write the crop of every face frame, not only the labelled ones.")
@click.option("--cue-noise", default=0.35, show_default=True,
              help="Per-frame noise on the rendered label cues (higher: harder, more to gain from time).")
@click.option("--videos/--no-videos", default=True, show_default=True, help="Also write the clips as mp4 files.")
@click.option("--jobs", default=-1, show_default=True, help="Parallel workers (-1: all cores).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def synth(out: Path, seed: int, train_videos: int, val_videos: int, test_videos: int, profile: str,
          min_frames: int | None, max_frames: int | None, all_crops: bool, cue_noise: float, videos: bool,
          jobs: int, overwrite: bool) -> None:
    """Generate a synthetic s-Aff-Wild2 dataset in the challenge layout under OUT.

    Example: abaw synth data/synth --train-videos 24 --seed 0
    """
    from abaw.data.synth import SynthConfig, format_summary, generate

    cfg = SynthConfig(seed=seed, train_videos=train_videos, val_videos=val_videos, test_videos=test_videos,
                      min_frames=min_frames, max_frames=max_frames, cue_noise=cue_noise, videos=videos,
                      profile=profile, all_crops=all_crops)
    summary = generate(out, cfg, jobs=jobs, overwrite=overwrite)
    click.echo(f"wrote {out}: {format_summary(summary)}")


@main.command()
@click.argument("pred", type=click.Path(exists=True, dir_okay=False))
@click.argument("ann", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the numbers as JSON.")
def evaluate(pred: str, ann: str, json_out: str | None) -> None:
    """Score a submission-format prediction file PRED against an annotation file ANN.

    Prints P_MTL = P_VA + P_EXPR + P_AU with per-AU and per-class F1.

    Example: abaw evaluate submission.txt data/synth/test_set_annotations.txt --json score.json
    """
    from abaw.data.annotations import read_annotations
    from abaw.data.submission import read_predictions
    from abaw.io import write_json
    from abaw.metrics import score_annotations

    score = score_annotations(read_predictions(pred), read_annotations(ann))
    click.echo(score.format_table())
    if json_out:
        write_json(json_out, score.to_dict())


@main.command("validate-submission")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--test-list", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The official test list (MTL.txt) the submission must follow.")
def validate_submission_cmd(file: str, test_list: str) -> None:
    """Check a submission FILE: header, order, count, types, ranges, NaN. Exit 1 if invalid.

    Example: abaw validate-submission submission.txt --test-list data/synth/MTL.txt
    """
    from abaw.data.submission import validate_submission
    from abaw.data.testlist import read_test_list

    tl = read_test_list(test_list)
    problems = validate_submission(file, tl)
    if problems:
        for p in problems:
            click.echo(f"invalid: {p}", err=True)
        sys.exit(1)
    click.echo(f"valid: {len(tl)} rows follow {test_list}")


# ---------------------------------------------------------------- extraction + cache (issue 3)


@main.command("extract")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "store", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache (a Zarr store directory) to create or complete.")
@click.option("-b", "--backbone", "backbones", multiple=True, required=True, metavar="SPEC",
              help="Backbone spec, repeatable: timm:<model>[?size=..&weights=PATH&norm=face&pretrained=0], "
                   "hsemotion:<model>?trust_pickle=1, ...; all run in one pass.")
@click.option("--face", type=click.Choice(["auto", "track", "largest", "left-right"]), default="auto",
              show_default=True, help="Which person per video: track one face, the largest per frame, or two "
                                      "people as <id>_left/<id>_right (auto: left-right where --only lists them).")
@click.option("--only", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Annotation file or test list (repeatable): extract only the videos and frames it lists.")
@click.option("--all-frames", is_flag=True, help="With --only: keep every frame of the listed videos.")
@click.option("--crop-size", default=112, show_default=True, help="Aligned crop side in pixels (0: the largest "
                                                                   "backbone input size).")
@click.option("--detector", type=click.Choice(["batched", "facenet"]), default="batched", show_default=True,
              help="MTCNN cascade: ours with batched window crops (fast), or facenet-pytorch's detect_face.")
@click.option("--detect-size", default=640, show_default=True,
              help="Face detection runs on a copy of each frame with this longest side (0: full size).")
@click.option("--min-face", default=20, show_default=True, help="Smallest face to detect, in detection pixels.")
@click.option("--min-score", default=0.9, show_default=True, help="Ignore detections scoring lower.")
@click.option("--batch-size", default=64, show_default=True, help="Backbone batch size.")
@click.option("--detect-batch", default=16, show_default=True, help="Video frames decoded and detected per batch.")
@click.option("--workers", default=-1, show_default=True, help="Image reader processes for frame folders "
                                                                "(-1: none on CPU, up to 8 with a GPU).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto: fp32 on CPU, bf16 (or fp16) autocast on CUDA.")
@click.option("--kind", type=click.Choice(["auto", "videos", "frames"]), default="auto", show_default=True,
              help="What INPUTS hold, when a folder is ambiguous.")
@click.option("--overwrite", is_flag=True, help="Replace cached videos made with other settings or weights.")
@click.option("--preview", type=click.Path(file_okay=False, path_type=Path),
              help="Write a contact sheet PNG of sample aligned crops per video into this folder.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def extract_cmd(inputs: tuple[Path, ...], store: Path, backbones: tuple[str, ...], face: str, only: tuple[str, ...],
                all_frames: bool, crop_size: int, detector: str, detect_size: int, min_face: int, min_score: float,
                batch_size: int, detect_batch: int, workers: int, device: str, precision: str, kind: str, overwrite: bool,
                preview: Path | None, json_out: str | None, quiet: bool) -> None:
    """Run frozen backbones over videos or aligned frame folders into a feature cache.

    INPUTS: video files, folders of videos, or Aff-Wild2-style cropped_aligned/ folders
    (one sub-folder of 00001.jpg... per video). Videos are decoded frame by frame, the face
    detected (MTCNN) and aligned to the 5-point template; frame folders are read as they are.
    Rerunning skips finished videos and resumes interrupted ones. Exit status 2 if some
    input failed (the others are complete).

    \b
    Examples:
      abaw extract data/synth/videos -o cache.zarr -b 'timm:test_efficientnet_gn?size=112&pretrained=0'
      abaw extract cropped_aligned -o cache.zarr -b timm:vit_base_patch16_224.mae -b 'hsemotion:enet_b0_8_va_mtl?trust_pickle=1'
      torchrun --nproc-per-node 4 -m abaw extract videos/ -o cache.zarr -b timm:resnet50 --only training_set_annotations.txt
    """
    from abaw.extract.runner import ExtractConfig, dist_env
    from abaw.extract.runner import extract as run_extract
    from abaw.io import write_json

    cfg = ExtractConfig(face=face, crop_size=crop_size, detector=detector, detect_size=detect_size, min_face=min_face,
                        min_score=min_score, batch_size=batch_size, detect_batch=detect_batch, workers=workers, device=device,
                        precision=precision, only=tuple(only), all_frames=all_frames, overwrite=overwrite,
                        preview=str(preview) if preview else None, kind=kind)
    rank, world, _ = dist_env()
    summary = run_extract(list(inputs), store, list(backbones), cfg, progress=not quiet)
    merged = summary.world > 1  # ranks met and merged their summaries: rank 0 reports
    if not merged or rank == 0:
        alone = world > 1 and not merged
        click.echo((f"[rank {rank}/{world}] " if alone else "") + summary.format())
        if json_out:
            write_json(f"{json_out}.rank{rank}" if alone else json_out, summary.to_dict())
    if not summary.ok:
        sys.exit(2)


@main.group("cache")
def cache_group() -> None:
    """Inspect a feature cache, or move features in and out of it (HDF5)."""


@cache_group.command("info")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the information as JSON.")
def cache_info_cmd(store: str, json_out: str | None) -> None:
    """Videos, frames, backbones (dims, sizes, fingerprints) and settings of STORE.

    Example: abaw cache info cache.zarr
    """
    from abaw.cache.info import cache_info, format_info
    from abaw.io import write_json

    info = cache_info(store)
    click.echo(format_info(info))
    if json_out:
        write_json(json_out, info)


@cache_group.command("export")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["hdf5"]), default="hdf5", show_default=True)
@click.option("-b", "--backbone", "keys", multiple=True, metavar="KEY", help="Only these feature keys (repeatable).")
@click.option("--video", "videos", multiple=True, help="Only these videos (repeatable).")
def cache_export_cmd(store: str, out: str, fmt: str, keys: tuple[str, ...], videos: tuple[str, ...]) -> None:
    """Write STORE's features (all, or chosen keys/videos) into one HDF5 file OUT:
    a group per video with frame, timestamp, face and feat/<key> datasets.

    Example: abaw cache export cache.zarr features.h5
    """
    from abaw.cache.hdf5 import export_hdf5

    r = export_hdf5(store, out, keys=keys or None, videos=videos or None)
    click.echo(f"wrote {out}: {r['videos']} videos, {r['arrays']} feature arrays")


@cache_group.command("import")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["hdf5"]), default="hdf5", show_default=True)
@click.option("--key", help="Cache key for the imported features (default: h5_<file stem>).")
@click.option("--dataset", help="Name of the features dataset inside each video group.")
@click.option("--overwrite", is_flag=True, help="Replace conflicting videos / features.")
def cache_import_cmd(src: str, store: str, fmt: str, key: str | None, dataset: str | None, overwrite: bool) -> None:
    """Bring features from an HDF5 file SRC into STORE: an `abaw cache export` file, or one
    with a group (or 2-D dataset) per video, or a group per video with a dataset per image.

    Example: abaw cache import other_tool_features.h5 cache.zarr --key affectnet_b0
    """
    from abaw.cache.hdf5 import import_hdf5

    r = import_hdf5(src, store, key=key, dataset=dataset, overwrite=overwrite)
    click.echo(f"imported {src} into {store}: {r['videos']} videos, {r['written']} written, "
               f"{r['skipped']} already there, {len(r['failed'])} failed")
    for f in r["failed"]:
        click.echo(f"FAILED {f['video']}: {f['error']}", err=True)
    if r["failed"]:
        sys.exit(2)


# ---------------------------------------------------------------- separate training (issue 6)


@main.command()
@click.option("--task", type=click.Choice(["au", "expr", "va"]), required=True, help="The task to fine-tune for.")
@click.option("--backbone", required=True,
              help="Start spec: timm:<model>[?pretrained=0&size=&norm=...] or ckpt:DIR (an earlier run).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="Start weights: .safetensors, or a torch state dict (read with weights_only).")
@click.option("--norm", type=click.Choice(["imagenet", "face", "half"]),
              help="Input normalisation (face: the ABAW7 winner's face mean/std). Default: the model's own.")
@click.option("--size", type=int, help="Input size in pixels (default: the model's own).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="The cropped_aligned/ folder (<video>/<frame>.jpg).")
@click.option("--train-ann", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training annotation file.")
@click.option("--val-ann", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Validation annotation file (early stopping, best checkpoint).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder = the checkpoint (ckpt:OUT).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="Frames per step and process.")
@click.option("--accum-steps", default=1, show_default=True, help="Gradient accumulation (micro-batches per step).")
@click.option("--lr", default=1e-4, show_default=True, help="Backbone learning rate (top layer under layer decay).")
@click.option("--head-lr", default=1e-3, show_default=True, help="Task-head learning rate.")
@click.option("--layer-decay", type=float, default=None,
              help="Layer-wise LR decay (1 = off). Default: 0.75 for ViTs, off otherwise.")
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--warmup-epochs", default=1.0, show_default=True, help="Linear warm-up, then cosine decay.")
@click.option("--min-lr-ratio", default=0.01, show_default=True, help="Cosine floor relative to the peak.")
@click.option("--grad-clip", default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--drop-path", default=0.1, show_default=True, help="Stochastic depth rate (where supported).")
@click.option("--head-dropout", default=0.0, show_default=True)
@click.option("--label-smoothing", default=0.0, show_default=True, help="EXPR cross-entropy label smoothing.")
@click.option("--class-weights", type=click.Choice(["none", "balanced"]), default="none", show_default=True,
              help="balanced: EXPR inverse class frequency; AU positives weighted by negatives/positives.")
@click.option("--patience", default=3, show_default=True, help="Early stopping: epochs without improvement.")
@click.option("--min-delta", default=0.0, show_default=True, help="Smallest improvement that counts.")
@click.option("--samples-per-epoch", default=0, show_default=True, help="Frames drawn per epoch (0: all).")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Face augmentations.")
@click.option("--flip", default=0.5, show_default=True, help="Horizontal flip probability.")
@click.option("--crop-scale", default=0.8, show_default=True, help="Random resized crop keeps this..1 of the area.")
@click.option("--rotation", default=10.0, show_default=True, help="Max rotation in degrees.")
@click.option("--color-jitter", default=0.3, show_default=True, help="Brightness/contrast/saturation jitter.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast (CUDA only).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True, help="(CUDA only).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available).")
@click.option("--workers", default=4, show_default=True, help="Data-loader processes per training process.")
@click.option("--overwrite", is_flag=True, help="Start again even if OUT holds a run (default: resume it).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def finetune(task: str, backbone: str, weights: str | None, norm: str | None, size: int | None, data: str,
             train_ann: str, val_ann: str, out: str, epochs: int, batch_size: int, accum_steps: int, lr: float,
             head_lr: float, layer_decay: float | None, weight_decay: float, warmup_epochs: float,
             min_lr_ratio: float, grad_clip: float, drop_path: float, head_dropout: float, label_smoothing: float,
             class_weights: str, patience: int, min_delta: float, samples_per_epoch: int, augment: bool,
             flip: float, crop_scale: float, rotation: float, color_jitter: float, amp: bool, channels_last: bool,
             seed: int, device: str | None, workers: int, overwrite: bool, progress: bool) -> None:
    """Fine-tune a backbone + task head on single face frames (separate training).

    Trains with the task loss (AU: BCE, EXPR: CE, VA: 1 - CCC; invalid labels masked), face
    augmentations, AdamW + cosine schedule, early stopping on the validation metric. OUT
    becomes a backbone for extraction: `abaw extract --backbone ckpt:OUT`. Rerun the same
    command to resume an interrupted run. Multi-GPU: `torchrun --nproc_per_node N -m abaw
    finetune ...`.

    \b
    Example:
      abaw finetune --task expr --backbone timm:vit_base_patch16_224.mae --norm face \\
          --data data/cropped_aligned --train-ann training_set_annotations.txt \\
          --val-ann validation_set_annotations.txt --out runs/expr_vit
    """
    import os

    from abaw.pipeline.finetune.config import AugmentConfig, FinetuneConfig
    from abaw.pipeline.finetune.model import with_options

    spec = with_options(backbone, weights=os.path.abspath(weights) if weights else None, norm=norm,
                        size=None if size is None else str(size))
    aug = AugmentConfig(enabled=augment, flip=flip, crop_scale=(crop_scale, 1.0), rotation=rotation,
                        brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
    cfg = FinetuneConfig(
        task=task, backbone=spec, data=os.path.abspath(data), train_ann=os.path.abspath(train_ann),
        val_ann=os.path.abspath(val_ann), epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, lr=lr,
        head_lr=head_lr, layer_decay=layer_decay, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        min_lr_ratio=min_lr_ratio, grad_clip=grad_clip, drop_path=drop_path, head_dropout=head_dropout,
        label_smoothing=label_smoothing, class_weights=class_weights, patience=patience, min_delta=min_delta,
        samples_per_epoch=samples_per_epoch, augment=aug, amp=amp, channels_last=channels_last, seed=seed)
    from abaw.pipeline.finetune.train import finetune as run

    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        s = run(cfg, out, device=device, workers=workers, progress=progress, overwrite=overwrite)
    except KeyboardInterrupt:
        if main_process:
            click.echo(f"interrupted; rerun the same command to resume {out} from its last finished epoch", err=True)
        sys.exit(130)
    if not main_process:
        return
    for h in s["history"]:
        loss = "untrained" if h["train_loss"] is None else f"train loss {h['train_loss']:.4f}"
        click.echo(f"epoch {h['epoch']:>3}  {loss:<20}  val {h['val_metric']:.4f}"
                   + ("  *" if h["epoch"] == s["best_epoch"] else ""))
    how = "stopped early" if s["stopped_early"] else "finished"
    click.echo(f"{how} after epoch {s['epochs_run']}: best {s['metric_name']} {s['best_metric']:.4f} "
               f"(epoch {s['best_epoch']}; untrained {s['untrained_metric']:.4f})")
    if s["best_metric"] is not None and s["best_metric"] <= s["untrained_metric"]:
        click.echo("warning: no epoch beat the untrained model on validation; check --lr and the data", err=True)
    click.echo(f"checkpoint: {out}  ->  abaw extract --backbone ckpt:{out}")


# ---------------------------------------------------------------- joint training (issue 4)


def _parse_task_weights(text: str) -> tuple[float, float, float]:
    """`1,1,1` (va,expr,au) or `va=1,expr=0.5,au=2` (unnamed tasks keep weight 1)."""
    names = ("va", "expr", "au")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all("=" in p for p in parts):
            w = dict.fromkeys(names, 1.0)
            for p in parts:
                k, v = p.split("=", 1)
                if k.strip() not in names:
                    raise click.BadParameter(f"unknown task {k.strip()!r} (va, expr, au)")
                w[k.strip()] = float(v)
            return (w["va"], w["expr"], w["au"])
        if len(parts) == 3:
            return tuple(float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        pass
    raise click.BadParameter(f"{text!r}: give three numbers va,expr,au or va=..,expr=..,au=..")


def _parse_tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    if tasks == ("all",):
        return ("va", "expr", "au")
    bad = [t for t in tasks if t not in ("va", "expr", "au")]
    if bad or not tasks:
        raise click.BadParameter(f"{text!r}: a comma-separated subset of va, expr, au")
    return tasks


@main.command("train-heads")
@click.option("--cache", required=True, type=click.Path(exists=True, file_okay=False),
              help="Feature cache (Zarr store) written by `abaw extract`.")
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="Dataset root: --train-ann/--val-ann default to its training_/validation_set_annotations.txt.")
@click.option("--train-ann", type=click.Path(exists=True, dir_okay=False), help="Training annotation file.")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False), help="Validation annotation file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--backbone", "backbones", multiple=True,
              help="Backbone features to use, by cache key or spec (repeat). Default: all in the cache.")
@click.option("--tasks", default="va,expr,au", show_default=True, help="Tasks trained jointly (subset of va,expr,au).")
@click.option("--fusion", default="sum", show_default=True, help="Feature Fusion Module: sum | concat | attention.")
@click.option("--temporal", default="transformer", show_default=True,
              help="Temporal Convergence Module: none | transformer | tcn | gru | lstm.")
@click.option("--d-model", default=256, show_default=True, help="Model width after the projections.")
@click.option("--layers", default=2, show_default=True, help="Temporal layers (transformer/rnn layers, tcn blocks).")
@click.option("--heads", default=4, show_default=True, help="Attention heads (transformer).")
@click.option("--ff-mult", default=2, show_default=True, help="Transformer feed-forward width / d_model.")
@click.option("--kernel", default=3, show_default=True, help="TCN kernel size.")
@click.option("--causal/--no-causal", default=False, show_default=True,
              help="Causal temporal context (online use): no look-ahead.")
@click.option("--dropout", default=0.1, show_default=True)
@click.option("--window", default=32, show_default=True, help="Frames per sequence window.")
@click.option("--stride", type=int, default=None, help="Step between training windows [default: window].")
@click.option("--max-gap", default="30", show_default=True,
              help="More missing frame numbers than this between two frames start a new sequence ('none': never).")
@click.option("--task-weights", default="1,1,1", show_default=True, help="Loss weights va,expr,au (or va=1,au=2).")
@click.option("--au-pos-weight", type=click.Choice(["none", "auto"]), default="none", show_default=True,
              help="BCE positive weights per AU (auto: negatives/positives).")
@click.option("--expr-class-weight", type=click.Choice(["none", "inverse"]), default="inverse", show_default=True,
              help="EXPR cross-entropy class weights.")
@click.option("--lr", default=5e-4, show_default=True, help="Peak AdamW learning rate.")
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--epochs", default=20, show_default=True, help="Maximum epochs.")
@click.option("--batch-frames", default=1024, show_default=True, help="Frames per batch.")
@click.option("--warmup", "warmup_epochs", default=1.0, show_default=True, help="Linear warm-up, in epochs.")
@click.option("--patience", default=5, show_default=True, help="Early stopping: epochs without a better val P_MTL.")
@click.option("--grad-clip", default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for torch (0: torch's default).")
@click.option("--init-from", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Initialise from finished runs (e.g. single-task runs): projections, fusion, temporal, heads.")
@click.option("--thresholds/--no-thresholds", "au_thresholds", default=True, show_default=True,
              help="Fit per-AU decision thresholds on validation.")
@click.option("--smoothing/--no-smoothing", default=True, show_default=True,
              help="Fit per-task temporal smoothing windows on validation.")
@click.option("--allow-missing", is_flag=True, help="Skip (and report) labelled frames without a cached feature.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out (same config).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def train_heads(cache: str, data: str | None, train_ann: str | None, val_ann: str | None, out: str,
                backbones: tuple[str, ...], tasks: str, max_gap: str, task_weights: str, init_from: tuple[str, ...],
                resume: bool, overwrite: bool, quiet: bool, **opts) -> None:
    """Train fusion + temporal module + AU/EXPR/VA heads jointly from cached features.

    Selects the best epoch on validation P_MTL, then fits per-AU thresholds and temporal
    smoothing on validation and reports P_MTL before and after each step.

    Example: abaw train-heads --cache cache.zarr --data data/synth --out runs/joint
    """
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.config import TrainConfig
    from abaw.pipeline.train import train

    if data:
        train_ann = train_ann or str(Path(data) / "training_set_annotations.txt")
        val_ann = val_ann or str(Path(data) / "validation_set_annotations.txt")
    if not train_ann or not val_ann:
        raise click.UsageError("give --train-ann and --val-ann (or --data DIR)")
    try:
        gap = None if max_gap.lower() == "none" else int(max_gap)
    except ValueError:
        raise click.BadParameter(f"{max_gap!r}: a number of frames or 'none'", param_hint="--max-gap") from None
    cfg = TrainConfig(backbones=backbones, tasks=_parse_tasks(tasks), max_gap=gap,
                      task_weights=_parse_task_weights(task_weights), init_from=init_from, **opts)
    run = train(cfg, cache, read_annotations(train_ann), read_annotations(val_ann), out, resume=resume,
                overwrite=overwrite, progress=not quiet)
    data_info = run.path / "data.json"
    from abaw.io import read_json

    for split in ("train", "val"):
        miss = read_json(data_info)[split].get("missing")
        if miss:
            click.echo(f"skipped {miss['missing']} of {miss['labelled']} labelled {split} frames without a cached "
                       f"feature (e.g. {', '.join(miss['examples'][:3])})")
    res = run.result

    def f(x):
        return "  n/a " if x is None else f"{x:.4f}"

    click.echo(f"best epoch {res['best_epoch']} of {res['epochs_run']}; validation P_MTL by post-processing step:")
    for s in res["steps"]:
        extra = f"  windows {s['windows']}" if "windows" in s else ""
        click.echo(f"  {s['step']:<14} P {s['total']:.4f}   VA {f(s['va'])}  EXPR {f(s['expr'])}  "
                   f"AU {f(s['au'])}{extra}")
    click.echo(f"run written to {run.path}")


# ---------------------------------------------------------------- search, predict, report, demo (issue 5)


def _split_paths(data: str | None, train_ann: str | None, val_ann: str | None) -> tuple[str, str]:
    if data:
        train_ann = train_ann or str(Path(data) / "training_set_annotations.txt")
        val_ann = val_ann or str(Path(data) / "validation_set_annotations.txt")
    if not train_ann or not val_ann:
        raise click.UsageError("give --train-ann and --val-ann (or --data DIR)")
    return train_ann, val_ann


def _parse_set(items: tuple[str, ...]) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise click.UsageError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


@main.command()
@click.option("--cache", required=True, type=click.Path(exists=True, file_okay=False), help="Feature cache.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="Dataset root holding the annotation files.")
@click.option("--train-ann", type=click.Path(exists=True, dir_okay=False), help="Training annotation file.")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False), help="Validation annotation file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Search folder (resumable).")
@click.option("--space", "space_file", type=click.Path(exists=True, dir_okay=False),
              help="Search-space file (YAML/JSON with base/grid/random sections).")
@click.option("--tasks", "tasks_opt", multiple=True,
              help="Grid over task sets, repeatable: --tasks va,expr,au --tasks au --tasks expr ...")
@click.option("--backbones", "backbones_opt", multiple=True,
              help="Grid over backbone sets (cache keys joined by +), repeatable.")
@click.option("--fusion", "fusion_opt", help="Grid over fusions, comma-separated: sum,concat,attention.")
@click.option("--temporal", "temporal_opt", help="Grid over temporal modules, comma-separated.")
@click.option("--window", "window_opt", help="Grid over windows, comma-separated.")
@click.option("--lr", "lr_opt", help="Grid over learning rates, comma-separated.")
@click.option("--set", "set_opt", multiple=True, help="Fixed training setting KEY=VALUE for every config "
              "(e.g. --set epochs=10 --set batch_frames=256).")
@click.option("--budget", type=int, help="Number of configs to run (sampled from the grid / random part).")
@click.option("--folds", default=0, show_default=True, help="K-fold cross-validation by video over train+val (K>=2).")
@click.option("--jobs", default=1, show_default=True, help="Configs trained in parallel on CPU (-1: all cores).")
@click.option("--compose", type=click.Choice(["best-per-task"]), help="Also compose the best run per task.")
@click.option("--seed", default=0, show_default=True, help="Sampling and fold seed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def search(cache: str, data: str | None, train_ann: str | None, val_ann: str | None, out: str,
           space_file: str | None, tasks_opt: tuple[str, ...], backbones_opt: tuple[str, ...], fusion_opt: str | None,
           temporal_opt: str | None, window_opt: str | None, lr_opt: str | None, set_opt: tuple[str, ...],
           budget: int | None, folds: int, jobs: int, compose: str | None, seed: int, quiet: bool) -> None:
    """Train many head configurations from one cache and rank them on validation.

    Example: abaw search --cache cache.zarr --data data/synth --out search --tasks va,expr,au --tasks au
    --tasks expr --tasks va --temporal none,transformer --set epochs=10 --jobs 2 --compose best-per-task
    """
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.search import SearchSettings, format_leaderboard, run_search
    from abaw.pipeline.space import SearchSpace, load_space, space_from_dict

    tr, va = _split_paths(data, train_ann, val_ann)
    space = load_space(space_file) if space_file else SearchSpace()
    grid = dict(space.grid)
    for key, vals in (("tasks", list(tasks_opt)), ("backbones", list(backbones_opt)),
                      ("fusion", fusion_opt.split(",") if fusion_opt else []),
                      ("temporal", temporal_opt.split(",") if temporal_opt else []),
                      ("window", [int(w) for w in window_opt.split(",")] if window_opt else []),
                      ("lr", [float(x) for x in lr_opt.split(",")] if lr_opt else [])):
        if vals:
            grid[key] = vals
    space = space_from_dict({"base": {**space.base, **_parse_set(set_opt)}, "grid": grid, "random": space.random})
    rows = run_search(space, cache, read_annotations(tr), read_annotations(va), out,
                      SearchSettings(budget=budget, seed=seed, folds=folds, jobs=jobs, compose=compose),
                      progress=not quiet, log=click.echo)
    click.echo(format_leaderboard(rows))
    click.echo(f"leaderboard: {Path(out) / 'leaderboard.csv'}")
    if compose:
        from abaw.io import read_json

        c = read_json(Path(out) / "composed.json")
        parts = ", ".join(f"{t.upper()} {v['score']:.4f} ({v['config']})" for t, v in c["tasks"].items())
        click.echo(f"composed best-per-task: P {c['total']:.4f} = {parts}  -> {Path(out) / 'composed.json'}")
    failed = [r for r in rows if "error" in r]
    if failed:
        click.echo(f"error: {len(failed)} configs failed (see the leaderboard)", err=True)
        sys.exit(1)


@main.command()
@click.option("--run", "runs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Run folder, repeatable (several: an ensemble per task).")
@click.option("--compose", "composed", type=click.Path(exists=True),
              help="composed.json (or its search folder) from `abaw search --compose best-per-task`.")
@click.option("--cache", type=click.Path(file_okay=False), help="Feature cache of the test videos "
              "(with --video: where to extract; default OUT/features.zarr).")
@click.option("--test-list", type=click.Path(exists=True, dir_okay=False),
              help="Test list (MTL.txt), or an annotation file to predict its frames (e.g. validation).")
@click.option("--video", "videos", multiple=True, type=click.Path(exists=True),
              help="A video file or folder of videos to annotate frame by frame, repeatable.")
@click.option("--out", required=True, type=click.Path(), help="Submission file (test list) or output folder (--video).")
@click.option("--postprocess", default="each", show_default=True, type=click.Choice(["each", "refit", "none"]),
              help="each: every run's fitted post-processing; refit: refit the ensemble on --val-ann; none: raw.")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False), help="Validation annotations (refit).")
@click.option("--allow-missing-videos", is_flag=True,
              help="Fill test videos with no predicted frame at all with the mean prediction.")
@click.option("--face", default="auto", show_default=True,
              type=click.Choice(["auto", "track", "largest", "left-right"]), help="With --video: which person.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
def predict(runs: tuple[str, ...], composed: str | None, cache: str | None, test_list: str | None,
            videos: tuple[str, ...], out: str, postprocess: str, val_ann: str | None, allow_missing_videos: bool,
            face: str, device: str) -> None:
    """Write the official submission for a test list, or per-frame affect for any video.

    \b
    Examples:
      abaw predict --compose search/ --cache cache.zarr --test-list MTL.txt --out submission.txt
      abaw predict --run runs/a --run runs/b --cache cache.zarr --test-list MTL.txt --out submission.txt
      abaw predict --video clip.mp4 --run runs/joint --out clip_affect/
    """
    from abaw.pipeline.predict import load_system, predict_test_list, predict_videos

    if bool(test_list) == bool(videos):  # exactly one of the two modes
        raise click.UsageError("give --test-list (a submission) or --video (per-frame CSV + timeline)")
    system = load_system(runs, composed, device="cpu" if device == "auto" else device)
    click.echo(f"system: {system.describe()}")
    if videos:
        for r in predict_videos(system, list(videos), out, cache, face=face, device=device):
            click.echo(f"{r['video']}: {r['frames']} frames ({r['faces']} with a face) -> {r['csv']}, {r['png']}")
        return
    if not cache:
        raise click.UsageError("--test-list needs --cache (the features of the test videos)")
    from abaw.data.annotations import read_annotations

    rep = predict_test_list(system, cache, test_list, out, postprocess,
                            read_annotations(val_ann) if val_ann else None, allow_missing_videos)
    click.echo(f"wrote {out}: {rep['entries']} rows ({rep['unique_frames']} frames: {rep['predicted']} predicted, "
               f"{rep['filled_from_neighbours']} without a face filled from temporal neighbours, "
               f"{rep['filled_from_mean']} from the mean); validated against {test_list}")
    if rep["missing_tasks"]:
        click.echo(f"warning: no run predicts {', '.join(t.upper() for t in rep['missing_tasks'])}; "
                   "those columns are placeholders", err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (PNGs + report.html).")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False),
              help="Validation annotations (default: the files each run recorded).")
@click.option("--top", default=5, show_default=True, help="Configs taken from each search folder.")
@click.option("--title", default="abaw report", show_default=True)
def report(paths: tuple[str, ...], out: str, val_ann: str | None, top: int, title: str) -> None:
    """Report on runs or search folders: per-task table, per-AU F1, confusion, VA plots, one HTML page.

    Example: abaw report search/ runs/joint --out report/
    """
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.report import build_report
    from abaw.pipeline.runeval import evaluations_from_paths

    evals = evaluations_from_paths(list(paths), read_annotations(val_ann) if val_ann else None, top)
    page = build_report(evals, out, title)
    for e in evals:
        s = e.score()
        click.echo(f"{e.name:<28} P_MTL {s.total:.4f}  (VA {s.va if s.va is None else round(s.va, 4)}, "
                   f"EXPR {s.expr if s.expr is None else round(s.expr, 4)}, AU {s.au if s.au is None else round(s.au, 4)})")
    click.echo(f"report: {page}")



@main.command()
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo writes (rerun to resume).")
@click.option("--quick", is_flag=True, help="A smaller, faster variant (under a minute).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out: str, quick: bool, quiet: bool) -> None:
    """Run the whole method on a synthetic dataset: synth, extract, search, predict,
    validate, evaluate, report, and per-frame affect for a video. A few minutes on 2 CPU cores.

    Example: abaw demo --out demo_out
    """
    from abaw.pipeline.demo import DemoConfig, run_demo

    run_demo(out, DemoConfig.quick() if quick else DemoConfig(), progress=not quiet)


if __name__ == "__main__":  # pragma: no cover
    main()
