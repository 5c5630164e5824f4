"""`abaw predict`."""

from __future__ import annotations

import click

from abaw.commands.options import echo_result


@click.command()
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
    from abaw.pipeline.predict.system import load_system, predict_test_list, predict_videos

    if bool(test_list) == bool(videos):  # exactly one of the two modes
        raise click.UsageError("give --test-list (a submission) or --video (per-frame CSV + timeline)")
    system = load_system(runs, composed, device="cpu" if device == "auto" else device)
    if videos:
        echo_result(predict_videos(system, list(videos), out, cache, face=face, device=device))
        return
    if not cache:
        raise click.UsageError("--test-list needs --cache (the features of the test videos)")
    from abaw.data.annotations import read_annotations

    echo_result(predict_test_list(system, cache, test_list, out, postprocess,
                                  read_annotations(val_ann) if val_ann else None, allow_missing_videos))
