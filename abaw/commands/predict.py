"""`abaw predict`."""

from __future__ import annotations

import sys

import click

from abaw.commands.options import echo_result, json_option

SYNTHETIC = "warning: this system was trained on synthetic data: its predictions on real faces are not meaningful"


@click.command()
@click.option("--run", "runs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Run folder, repeatable (several: an ensemble per task).")
@click.option("--compose", "composed", type=click.Path(exists=True),
              help="composed.json (or its search folder) from `abaw search --compose best-per-task`.")
@click.option("--system", "system_ref", metavar="NAME|PATH|URL|hf:REPO",
              help="A ready system: `fer` (zero-shot expressions, built in), a folder written by "
                   "`abaw export-system`, or its URL (file://, http(s)://, hf:REPO), downloaded and SHA-256 checked.")
@click.option("--cache", type=click.Path(file_okay=False),
              help="Feature cache of the test videos (--test-list; --video encodes the frames directly).")
@click.option("--test-list", type=click.Path(exists=True, dir_okay=False),
              help="Test list (MTL.txt), or an annotation file to predict its frames (e.g. validation).")
@click.option("--video", "videos", multiple=True, type=click.Path(),
              help="A video, image, folder of frames or photos (any mix), repeatable.")
@click.option("--out", required=True, type=click.Path(), help="Submission file (test list) or output folder (--video).")
@click.option("--postprocess", default="each", show_default=True, type=click.Choice(["each", "refit", "none"]),
              help="each: every run's fitted post-processing; refit: refit the ensemble on --val-ann; none: raw.")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False), help="Validation annotations (refit).")
@click.option("--allow-missing-videos", is_flag=True,
              help="Fill test videos with no predicted frame at all with the mean prediction.")
@click.option("--face", default="auto", show_default=True,
              type=click.Choice(["auto", "track", "largest", "left-right", "all"]),
              help="With --video: which people (all: every face, tracked ids; auto: track).")
@click.option("--format", "fmt", default="csv", show_default=True, type=click.Choice(["csv", "parquet"]),
              help="With --video: the table's format (parquet needs pyarrow).")
@click.option("--kind", default="detect", show_default=True, type=click.Choice(["detect", "crops"]),
              help="With --video: detect: every input through MTCNN + alignment; crops: images and "
                   "frame folders are aligned face crops already (no detection; warned if not square ~112 px).")
@click.option("--detect-size", default=640, show_default=True, type=click.IntRange(0),
              help="With --video: longest side of the copy faces are detected on (0: full size).")
@click.option("--no-plots", is_flag=True, help="With --video: no timeline PNGs (one per input and person).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def predict(runs: tuple[str, ...], composed: str | None, system_ref: str | None, cache: str | None,
            test_list: str | None, videos: tuple[str, ...], out: str, postprocess: str, val_ann: str | None,
            allow_missing_videos: bool, face: str, fmt: str, kind: str, detect_size: int, no_plots: bool,
            device: str, json_out: str | None, quiet: bool) -> None:
    """Write the official submission for a test list, or per-frame affect for any video or image.

    Exit status: 0 done, 1 error, 2 some inputs failed (each named on stderr; the others
    are in the table) or a usage error.

    \b
    Examples:
      abaw predict --system fer --video clip.mp4 --out clip_affect/
      abaw predict --system fer --video photos/ --face all --out faces/
      abaw predict --system exported/ --video clip.mp4 --out clip_affect/
      abaw predict --compose search/ --cache cache.zarr --test-list MTL.txt --out submission.txt
      abaw predict --run runs/a --run runs/b --cache cache.zarr --test-list MTL.txt --out submission.txt
      abaw predict --video clip.mp4 --run runs/joint --out clip_affect/
    """
    from abaw.runtime import resolve_device

    if bool(test_list) == bool(videos):  # exactly one of the two modes
        raise click.UsageError("give --test-list (a submission) or --video (per-frame table)")
    if sum(map(bool, (runs, composed, system_ref))) != 1:
        raise click.UsageError("give one of --run, --compose or --system")
    if videos and cache:
        raise click.UsageError("--cache is only for --test-list: --video encodes the frames directly "
                               "(nothing is cached)")
    dev = str(resolve_device(device))
    if system_ref:
        from abaw.pipeline.predict.hub import open_system

        system = open_system(system_ref, device=dev)
    else:
        from abaw.pipeline.predict.system import load_system

        system = load_system(runs, composed, device="cpu" if device == "auto" else device)
        if videos:  # the runs as a crop system
            from abaw.pipeline.predict.heads_system import RunsSystem

            system = RunsSystem.of_runs(system, device=dev)
    if videos:
        from abaw.pipeline.predict.anyinput import predict_inputs

        res = predict_inputs(system, list(videos), out, face="track" if face == "auto" else face, fmt=fmt,
                             device=dev, detect_size=detect_size, progress=not quiet, kind=kind,
                             plots=not no_plots)
        echo_result(res, json_out)
        sys.exit(2 if res.failed else 0)
    if system_ref:
        if not hasattr(system, "system"):
            raise click.UsageError(f"--system {system_ref} predicts from face crops: use it with --video")
        for w in system.notes + ((SYNTHETIC,) if system.synthetic else ()):
            click.echo(w, err=True)
        system = system.system  # a test list: the exported runs as a system of runs
    if not cache:
        raise click.UsageError("--test-list needs --cache (the features of the test videos)")
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.predict.system import predict_test_list

    res = predict_test_list(system, cache, test_list, out, postprocess,
                            read_annotations(val_ann) if val_ann else None, allow_missing_videos)
    echo_result(res, json_out)


@click.command("export-system")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="The system folder to write (system.json + heads/*.safetensors).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT.")
@json_option
def export_system(sources: tuple[str, ...], out: str, overwrite: bool, json_out: str | None) -> None:
    """Write a trained system (run folders, or a composed.json / search folder) as one shareable folder.

    Heads as safetensors, post-processing, label sets, the backbones' specs with weight
    SHA-256, a summary of the training data (whether synthetic) and the abaw version, all
    listed with SHA-256 in OUT/system.json. Serve the folder over HTTP (or push it to the
    Hugging Face Hub) and `abaw predict --system URL` fetches and checks it.

    \b
    Examples:
      abaw export-system search/ -o my_system/
      abaw export-system runs/au runs/joint -o my_system/
      abaw predict --system my_system/ --video clip.mp4 --out clip_affect/
    """
    from abaw.pipeline.predict.export import export_system as run_export

    res = run_export(list(sources), out, overwrite=overwrite)
    echo_result(res, json_out)
