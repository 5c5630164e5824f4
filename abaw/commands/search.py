"""`abaw search`."""

from __future__ import annotations

import sys

import click

from abaw.commands.options import echo_result, json_option, parse_set, split_paths


@click.command()
@click.option("--cache", required=True, type=click.Path(exists=True, file_okay=False), help="Feature cache.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="Dataset root holding the annotation files.")
@click.option("--train-ann", type=click.Path(exists=True, dir_okay=False), help="Training annotation file.")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False), help="Validation annotation file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Search folder (resumable).")
@click.option("--space", "space_file", metavar="FILE|RECIPE",
              help="Search-space file (YAML/JSON with base/grid/random sections) or a shipped recipe's name "
                   "(`abaw recipes`).")
@click.option("--tasks", "tasks_opt", multiple=True,
              help="Grid over task sets, repeatable: --tasks va,expr,au --tasks au --tasks au,v ...")
@click.option("--backbones", "backbones_opt", multiple=True,
              help="Grid over backbone sets (cache keys joined by +), repeatable.")
@click.option("--fusion", "fusion_opt", help="Grid over fusions, comma-separated: sum,concat,attention.")
@click.option("--temporal", "temporal_opt", help="Grid over temporal modules, comma-separated.")
@click.option("--window", "window_opt", help="Grid over windows, comma-separated.")
@click.option("--lr", "lr_opt", help="Grid over learning rates, comma-separated.")
@click.option("--set", "set_opt", multiple=True, help="Fixed training setting KEY=VALUE for every config "
              "(e.g. --set epochs=10 --set batch_frames=256).")
@click.option("--budget", type=int, help="Number of configs to run (sampled from the grid / random part).")
@click.option("--folds", default=0, show_default=True,
              help="K-fold cross-validation by video over train+val (K>=2; folds balanced on the labels unless "
                   "--no-stratify).")
@click.option("--repeats", default=1, show_default=True,
              help="Repeated K-fold: R partitions into K folds (R x K runs per config). Every frame's honest "
                   "estimate then averages R models that did not train on it, as predict averages the R x K; "
                   "--compose blend also extrapolates it from 1 and R models to the R x K.")
@click.option("--stratify/--no-stratify", default=None,
              help="With --folds (stratified by default): balance every fold's labels (expression classes, AU "
                   "positives) as well as its frames, so no fold holds most of a rare class that its own model then "
                   "barely sees. --no-stratify: frames only (the partitions of searches before this was the default).")
@click.option("--jobs", default=1, show_default=True,
              help="Runs at once: CPU processes (cores split between them) or slots spread over the visible GPUs "
              "(0 or -1: all cores / as many as fit per GPU).")
@click.option("--scheduler", help="Run the configs on a Dask cluster: the scheduler's address, tcp://HOST:8786 "
              "(needs pip install 'abaw[dask]'; the cache and --out on a filesystem every worker sees).")
@click.option("--seeds", "seeds_opt", help="Grid over training seeds, comma-separated (0,1,2: every config "
              "trained three times; --compose blend averages the replicas as one seed ensemble).")
@click.option("--compose", type=click.Choice(["best-per-task", "blend"]),
              help="Also compose a system: the best config per task, or a per-task blend of every config "
                   "(weights fitted on validation, honest score cross-fitted; seed replicas averaged).")
@click.option("--seed", default=0, show_default=True, help="Sampling and fold seed.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option
def search(cache: str, data: str | None, train_ann: str | None, val_ann: str | None, out: str,
           space_file: str | None, tasks_opt: tuple[str, ...], backbones_opt: tuple[str, ...], fusion_opt: str | None,
           temporal_opt: str | None, window_opt: str | None, lr_opt: str | None, seeds_opt: str | None,
           set_opt: tuple[str, ...],
           budget: int | None, folds: int, repeats: int, stratify: bool | None, jobs: int,
           scheduler: str | None, compose: str | None, seed: int, quiet: bool, json_out: str | None) -> None:
    """Train many head configurations from one cache and rank them on validation.

    Example: abaw search --cache cache.zarr --data data/synth --out search --tasks va,expr,au --tasks au
    --tasks expr --tasks va --temporal none,transformer --set epochs=10 --jobs 2 --compose best-per-task

    The defaults and the linear baseline, 5-fold, blended per task out-of-fold (the strongest
    system measured in bench/bench_accuracy.py): abaw search --cache cache.zarr --data data/synth
    --out kf --folds 5 --compose blend   (--seeds 0,7,8: each config with three training seeds;
    --repeats 2: repeated 5-fold, twice the runs, an honest estimate closer to what predict scores)
    """
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.search.runner import SearchSettings, run_search
    from abaw.pipeline.search.space import SearchSpace, load_space, space_from_dict

    tr, va = split_paths(data, train_ann, val_ann)
    from abaw.recipes import find_recipe

    space = load_space(find_recipe(space_file)) if space_file else SearchSpace()
    grid = dict(space.grid)

    def numbers(opt: str, text: str | None, kind: type) -> list:
        try:
            return [kind(x) for x in text.split(",")] if text else []
        except ValueError:
            raise click.BadParameter(f"{text!r}: comma-separated {kind.__name__} values", param_hint=opt) from None

    for key, vals in (("tasks", list(tasks_opt)), ("backbones", list(backbones_opt)),
                      ("fusion", fusion_opt.split(",") if fusion_opt else []),
                      ("temporal", temporal_opt.split(",") if temporal_opt else []),
                      ("window", numbers("--window", window_opt, int)),
                      ("lr", numbers("--lr", lr_opt, float)),
                      ("seed", numbers("--seeds", seeds_opt, int))):
        if vals:
            grid[key] = vals
    space = space_from_dict({"base": {**space.base, **parse_set(set_opt)}, "grid": grid, "random": space.random})
    result = run_search(space, cache, read_annotations(tr), read_annotations(va), out,
                        SearchSettings(budget=budget, seed=seed, folds=folds, repeats=repeats, stratify=stratify, jobs=jobs,
                                       scheduler=scheduler, compose=compose),
                        progress=not quiet, log=click.echo)
    echo_result(result, json_out)
    if result.failed:
        sys.exit(1)
