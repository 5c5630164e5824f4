"""`abaw report` and `abaw demo`."""

from __future__ import annotations

import click

from abaw.commands.options import echo_result, json_option


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (PNGs + report.html).")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False),
              help="Validation annotations (default: the files each run recorded).")
@click.option("--top", default=5, show_default=True, help="Configs taken from each search folder.")
@click.option("--title", default="abaw report", show_default=True)
@json_option
def report(paths: tuple[str, ...], out: str, val_ann: str | None, top: int, title: str, json_out: str | None) -> None:
    """Report on runs or search folders: one HTML page with contents, scores, what differs between the
    runs, the leaderboard, per-AU F1, confusion, VA plots, training curves and provenance.

    Example: abaw report search/ runs/joint --out report/
    """
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.report import report as make_report

    echo_result(make_report(list(paths), out, read_annotations(val_ann) if val_ann else None, top, title,
                            command=command_line()), json_out)


@click.command()
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo writes (rerun to resume).")
@click.option("--quick", is_flag=True, help="A smaller, faster variant (under a minute).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@json_option
def demo(out: str, quick: bool, quiet: bool, json_out: str | None) -> None:
    """Run the whole method on a synthetic dataset: synth, extract, search, predict,
    validate, evaluate, report, and per-frame affect for a video. A few minutes on 2 CPU cores.

    Example: abaw demo --out demo_out
    """
    from abaw.pipeline.demo import DemoConfig, run_demo

    echo_result(run_demo(out, DemoConfig.quick() if quick else DemoConfig(), progress=not quiet, log=click.echo,
                         command=command_line()), json_out)


def command_line() -> str:
    """The command line as typed (`abaw ...`), for the report's provenance."""
    import shlex
    import sys

    return shlex.join(["abaw", *sys.argv[1:]])
