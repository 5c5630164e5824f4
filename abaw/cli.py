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
@click.option("--min-frames", default=100, show_default=True, help="Shortest clip, in frames.")
@click.option("--max-frames", default=200, show_default=True, help="Longest clip, in frames.")
@click.option("--cue-noise", default=0.35, show_default=True,
              help="Per-frame noise on the rendered label cues (higher: harder, more to gain from time).")
@click.option("--videos/--no-videos", default=True, show_default=True, help="Also write the clips as mp4 files.")
@click.option("--jobs", default=-1, show_default=True, help="Parallel workers (-1: all cores).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def synth(out: Path, seed: int, train_videos: int, val_videos: int, test_videos: int, min_frames: int,
          max_frames: int, cue_noise: float, videos: bool, jobs: int, overwrite: bool) -> None:
    """Generate a synthetic s-Aff-Wild2 dataset in the challenge layout under OUT.

    Example: abaw synth data/synth --train-videos 24 --seed 0
    """
    from abaw.data.synth import SynthConfig, generate

    cfg = SynthConfig(seed=seed, train_videos=train_videos, val_videos=val_videos, test_videos=test_videos,
                      min_frames=min_frames, max_frames=max_frames, cue_noise=cue_noise, videos=videos)
    summary = generate(out, cfg, jobs=jobs, overwrite=overwrite)
    r = summary["rows"]
    click.echo(f"wrote {out}: {len(summary['clips'])} clips; annotated frames train {r['train']}, "
               f"val {r['val']}, test {r['test']} (test list {r['test_list']} entries)")


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


# ---------------------------------------------------------------- separate training (issue 6)


# ---------------------------------------------------------------- joint training (issue 4)


# ---------------------------------------------------------------- search, predict, report, demo (issue 5)


if __name__ == "__main__":  # pragma: no cover
    main()
