"""Option parsing shared by the commands (task lists, loss weights, annotation paths, --set)."""

from __future__ import annotations

from pathlib import Path

import click


def echo_result(result, json_out: str | None = None) -> None:
    """Print an entry point's result: `format()` on stdout, its warnings on stderr; with
    `json_out`, also write `result.to_dict()` there (atomically)."""
    click.echo(result.format())
    for w in result.warnings:
        click.echo(w, err=True)
    if json_out:
        from abaw.io import write_json

        write_json(json_out, result.to_dict())


def json_option(f):
    """`--json FILE`: the same result as JSON (every long command has it)."""
    return click.option("--json", "json_out", type=click.Path(dir_okay=False),
                        help="Also write the result as JSON to this file.")(f)


def parse_task_weights(text: str, unnamed: float = 1.0) -> tuple[float, float, float]:
    """`1,1,1` (va,expr,au) or `va=1,expr=0.5,au=2` (unnamed tasks get `unnamed`: weight 1)."""
    names = ("va", "expr", "au")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all("=" in p for p in parts):
            w = dict.fromkeys(names, unnamed)
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


def parse_task_windows(text: str) -> tuple[int, int, int]:
    """`30,5,1` (va,expr,au) or `va=30,expr=5,au=1` (unnamed tasks: 0 = the whole window)."""
    try:
        w = parse_task_weights(text, unnamed=0.0)
        if all(x >= 0 and x == int(x) for x in w):
            return tuple(int(x) for x in w)  # type: ignore[return-value]
    except click.BadParameter:
        pass
    raise click.BadParameter(f"{text!r}: three frame counts >= 0, va,expr,au or va=..,expr=..,au=..",
                             param_hint="--task-windows")


def parse_tasks(text: str) -> tuple[str, ...]:
    """`va,expr,au`, `all`, or with `v` / `a` for valence / arousal alone (`au,v`; `v,a` = `va`)."""
    from abaw.data.labels import split_tasks

    tasks = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    if tasks == ("all",):
        return ("va", "expr", "au")
    try:
        split_tasks(tasks)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a comma-separated subset of va, expr, au (v / a: valence / "
                                 "arousal alone)", param_hint="--tasks") from None
    return tasks


def split_paths(data: str | None, train_ann: str | None, val_ann: str | None) -> tuple[str, str]:
    if data:
        train_ann = train_ann or str(Path(data) / "training_set_annotations.txt")
        val_ann = val_ann or str(Path(data) / "validation_set_annotations.txt")
    if not train_ann or not val_ann:
        raise click.UsageError("give --train-ann and --val-ann (or --data DIR)")
    return train_ann, val_ann


def parse_set(items: tuple[str, ...]) -> dict:
    from abaw.safeload import load_yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise click.UsageError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = load_yaml(v, f"--set {item}")
    return out
