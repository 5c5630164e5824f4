"""`abaw blend`."""

from __future__ import annotations

import click

from abaw.commands.options import echo_result, json_option


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="The blend file to write (JSON; abaw predict --compose / export-system take it).")
@click.option("--space", default="prob", show_default=True, type=click.Choice(["prob", "logit"]),
              help="Average EXPR/AU probabilities (prob) or log-probabilities/logits (logit); VA as values.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(1),
              help="Weight grid: multiples of 1/STEPS.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2),
              help="Folds of validation videos for the honest (cross-fitted) estimate.")
@click.option("--au-weight-folds", default=5, show_default=True, type=click.IntRange(0),
              help="AU weights are scored at per-AU thresholds fitted on other folds of validation videos "
                   "(0: at thresholds fitted on the scored frames).")
@click.option("--au-weights", default="task", show_default=True, type=click.Choice(["task", "per-au"]),
              help="AU: one weight per member for all AUs (task), or one per member and AU (per-au).")
@click.option("--group-seeds/--no-group-seeds", default=True, show_default=True,
              help="Runs whose settings differ only in --seed are one member (averaged with equal weights).")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False),
              help="Validation annotations (default: those each run recorded).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@json_option
def blend(sources: tuple[str, ...], out: str, space: str, steps: int, folds: int, au_weight_folds: int,
          au_weights: str, group_seeds: bool,
          val_ann: str | None, overwrite: bool, json_out: str | None) -> None:
    """Blend several runs per task with weights searched on validation (HSEmotion's last step).

    SOURCES: run folders (each serves the tasks it trained) and search folders or
    composed.json files (each task's chosen config). Per task the weights (>= 0, sum 1)
    and then the runs' post-processing (smoothing, AU thresholds) are fitted on the
    validation outputs; the optimistic score and an honest one (weights and
    post-processing fitted on other validation-video folds) are printed and saved.
    Runs that differ only in their training seed form one member: a seed ensemble.

    \b
    Examples:
      abaw blend runs/a runs/b -o blend.json
      abaw blend runs/s0 runs/s1 runs/s2 runs/linear -o blend.json   # 3-seed ensemble + linear probe
      abaw blend search/ runs/hsemotion --space logit -o blend.json
      abaw predict --compose blend.json --cache cache.zarr --test-list MTL.txt --out submission.txt
    """
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.blend import BlendConfig
    from abaw.pipeline.blend import blend as run_blend

    res = run_blend(list(sources), out, BlendConfig(space=space, steps=steps, folds=folds, group_seeds=group_seeds,
                                                  au_weight_folds=au_weight_folds, au_weights=au_weights),
                    read_annotations(val_ann) if val_ann else None, overwrite=overwrite)
    echo_result(res, json_out)
