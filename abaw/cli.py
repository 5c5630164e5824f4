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
    click.echo(score.format())
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
@click.option("--all-frames", is_flag=True,
              help="With --only: keep every frame of the listed videos (for train-heads --context dense).")
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
@click.option("--allow-partial", is_flag=True, help="Keep the frames of a damaged or truncated video decoded "
                                                    "before the damage (marked partial; exit status 2).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def extract_cmd(inputs: tuple[Path, ...], store: Path, backbones: tuple[str, ...], face: str, only: tuple[str, ...],
                all_frames: bool, crop_size: int, detector: str, detect_size: int, min_face: int, min_score: float,
                batch_size: int, detect_batch: int, workers: int, device: str, precision: str, kind: str, overwrite: bool,
                preview: Path | None, allow_partial: bool, json_out: str | None, quiet: bool) -> None:
    """Run frozen backbones over videos or aligned frame folders into a feature cache.

    INPUTS: video files, folders of videos, or Aff-Wild2-style cropped_aligned/ folders
    (one sub-folder of 00001.jpg... per video). Videos are decoded frame by frame, the face
    detected (MTCNN) and aligned to the 5-point template; frame folders are read as they are.
    Rerunning skips finished videos and resumes interrupted ones. Exit status 2 if some
    input failed (the others are complete) or was kept partial (--allow-partial).

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
                        preview=str(preview) if preview else None, kind=kind, allow_partial=allow_partial)
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


@cache_group.command("verify")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--repair", is_flag=True, help="Delete the damaged units, so that rerunning `abaw extract` redoes them.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the result as JSON.")
def cache_verify_cmd(store: str, repair: bool, json_out: str | None) -> None:
    """Check every array of STORE (files, crc32c checksums, content hashes, finite
    features); name each damaged video/array and exit 1 if there is any (0 after --repair).

    Example: abaw cache verify cache.zarr --repair
    """
    from abaw.cache.verify import verify_store
    from abaw.io import write_json

    r = verify_store(store, repair=repair)
    click.echo(r.format())
    if json_out:
        write_json(json_out, r.to_dict())
    if not r.ok and not repair:
        sys.exit(1)


# ---------------------------------------------------------------- training, search, blend, predict, report, demo


def _add_commands() -> None:
    from abaw.commands.blend import blend
    from abaw.commands.predict import export_system, predict
    from abaw.commands.recipes import recipes
    from abaw.commands.report import demo, report
    from abaw.commands.search import search
    from abaw.commands.train import finetune, train_heads

    for cmd in (finetune, train_heads, search, blend, predict, export_system, report, demo, recipes):
        main.add_command(cmd)


_add_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
