"""`abaw recipes`."""

from __future__ import annotations

import click

from abaw.commands.options import echo_result


@click.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List the published recipes shipped with abaw (name, source scores, description).

    A recipe is a search space (`abaw search --space NAME`) and a training config
    (`abaw train-heads --config NAME`); both options also take a file path.

    \b
    Examples:
      abaw recipes
      abaw recipes show abaw7-winner
      abaw train-heads --config abaw7-winner --cache cache.zarr --data DATA --out runs/winner
    """
    if ctx.invoked_subcommand is None:
        from abaw.recipes import RecipeList
        from abaw.recipes import recipes as shipped

        echo_result(RecipeList(tuple(shipped())))


@recipes.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Print a recipe file (by name, e.g. hsemotion, or a path)."""
    from abaw.io import read_text
    from abaw.recipes import find_recipe

    click.echo(read_text(find_recipe(name)), nl=False)
