"""Official MTL submission files: writing, reading and validating.

Format: header `image,valence,arousal,expression,aus`, then one row per test-list entry
in its order: `<video>/<frame>.jpg,<valence>,<arousal>,<expr 0-7>,<12 x 0/1>`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from abaw.data.labels import (
    N_AU,
    N_EXPR,
    SUBMISSION_HEADER,
    frame_problem,
    parse_image_name,
)
from abaw.data.testlist import TestList
from abaw.errors import AbawError, FormatError
from abaw.io import atomic_write, read_text

N_FIELDS = 4 + N_AU


@dataclass(frozen=True, eq=False)
class Predictions:
    """Per-image predictions (one row per unique image)."""

    images: tuple[str, ...]
    va: np.ndarray  # float32 [N, 2]
    expr: np.ndarray  # int64 [N]
    au: np.ndarray  # int8 [N, 12]

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.images)}


def write_submission(path: str | os.PathLike, images: list[str] | tuple[str, ...],
                     va: np.ndarray, expr: np.ndarray, au: np.ndarray) -> None:
    """Write a submission atomically: VA clipped to [-1, 1], EXPR int, AUs 0/1."""
    va = np.clip(np.asarray(va, dtype=np.float64), -1.0, 1.0)
    expr = np.asarray(expr)
    au = np.asarray(au)
    n = len(images)
    if va.shape != (n, 2) or expr.shape != (n,) or au.shape != (n, N_AU):
        raise AbawError(
            f"submission arrays do not match {n} images: va {va.shape}, expr {expr.shape}, au {au.shape}"
        )
    if np.isnan(va).any():
        raise AbawError("submission VA contains NaN")
    if ((expr < 0) | (expr >= N_EXPR)).any():
        raise AbawError("submission expressions must be in 0..7")
    au_bin = (au > 0).astype(np.int8) if au.dtype.kind == "f" else au.astype(np.int8)
    if ((au_bin != 0) & (au_bin != 1)).any():
        raise AbawError("submission AUs must be 0/1")
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(SUBMISSION_HEADER + "\n")
        for name, (v, a), e, row in zip(images, va.tolist(), expr.tolist(), au_bin.tolist()):
            f.write(f"{name},{v:.6f},{a:.6f},{int(e)},{','.join(map(str, row))}\n")


def _read_rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    lines = read_text(path).splitlines()
    if not lines:
        raise FormatError(path, "empty file (expected a header line)", 1)
    body = [(n, ln.rstrip("\r").split(",")) for n, ln in enumerate(lines[1:], start=2) if ln.strip()]
    return lines[0].rstrip("\r").split(","), body


# The one rule set of a submission row, shared by `evaluate` (read_predictions) and
# `validate-submission`: kind -> (validator title, what, rule).
_RULES: dict[str, tuple[str, str, str]] = {
    "fields": (f"rows without {N_FIELDS} comma-separated fields", "row has", f"(expected {N_FIELDS} comma-separated)"),
    "name": ("bad image names", "image name", "is not a usable <video>/<frame>.jpg"),
    "va-type": ("non-numeric valence/arousal", "valence/arousal", "is not a plain decimal number (no spaces)"),
    "nan": ("NaN or infinite valence/arousal", "valence/arousal", "is NaN or infinite"),
    "va-range": ("valence/arousal outside [-1, 1]", "valence/arousal", "outside [-1, 1]"),
    "expr-type": ("non-integer expression", "expression", "is not a plain integer (no spaces)"),
    "expr-range": (f"expression outside 0..{N_EXPR - 1}", "expression", f"not in 0..{N_EXPR - 1}"),
    "au": ("AU values other than 0/1", "AU values", "must each be 0 or 1"),
}
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


@dataclass(frozen=True)
class _Row:
    image: str
    va: tuple[float, float]
    expr: int
    au: tuple[int, ...]


def _check_row(f: list[str]) -> tuple[_Row | None, list[tuple[str, str]]]:
    """A parsed row, or None and its problems as (kind, offending value)."""
    if len(f) != N_FIELDS:
        return None, [("fields", f"{len(f)} fields")]
    problems: list[tuple[str, str]] = []
    parsed = parse_image_name(f[0])
    if parsed is None or frame_problem(f[0], parsed[1]):
        problems.append(("name", repr(f[0][:80])))
    va = (0.0, 0.0)
    if all(_NUMBER_RE.fullmatch(x) for x in f[1:3]):
        va = (float(f[1]), float(f[2]))
        if not all(math.isfinite(x) for x in va):
            problems.append(("nan", f"{f[1]}, {f[2]}"))
        elif not all(-1.0 <= x <= 1.0 for x in va):
            problems.append(("va-range", f"{f[1]}, {f[2]}"))
    elif any(x.lower() in _NON_FINITE for x in f[1:3]):
        problems.append(("nan", f"{f[1]}, {f[2]}"))
    else:
        problems.append(("va-type", f"{f[1]!r}, {f[2]!r}"))
    expr = -1
    if not _INT_RE.fullmatch(f[3]):
        problems.append(("expr-type", repr(f[3])))
    else:
        expr = int(f[3])
        if not 0 <= expr < N_EXPR:
            problems.append(("expr-range", f[3]))
    if any(x not in ("0", "1") for x in f[4:]):
        problems.append(("au", ",".join(f[4:])[:80]))
    if problems:
        return None, problems
    return _Row(f[0], va, expr, tuple(int(x) for x in f[4:])), []


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read a submission-format prediction file (for `abaw evaluate`), with the same rules
    as `validate_submission`; the first bad row is a one-line `file:line: reason`.

    Repeated images must carry identical predictions; they are merged.
    """
    path = os.fspath(path)
    header, body = _read_rows(path)
    if not header or header[0].strip().lower() != "image":
        raise FormatError(path, "expected a header line starting with 'image'", 1)
    rows: dict[str, tuple[int, _Row]] = {}
    for n, f in body:
        row, problems = _check_row(f)
        if row is None:
            kind, value = problems[0]
            _, what, rule = _RULES[kind]
            raise FormatError(path, f"{what} {value} {rule}", n)
        if row.image in rows:
            first, old = rows[row.image]
            if old != row:
                raise FormatError(path, f"image {row.image} predicted differently on lines {first} and {n}", n)
            continue
        rows[row.image] = (n, row)
    kept = [r for _, r in rows.values()]
    return Predictions(
        images=tuple(r.image for r in kept),
        va=np.asarray([r.va for r in kept], dtype=np.float32).reshape(-1, 2),
        expr=np.asarray([r.expr for r in kept], dtype=np.int64),
        au=np.asarray([r.au for r in kept], dtype=np.int8).reshape(-1, N_AU),
    )


def validate_submission(path: str | os.PathLike, test_list: TestList, max_examples: int = 3) -> list[str]:
    """Check a submission file against a test list; one message per problem class.

    Returns an empty list when the file is valid.
    """
    path = os.fspath(path)
    header, body = _read_rows(path)
    problems: list[str] = []
    if ",".join(h.strip() for h in header) != SUBMISSION_HEADER:
        problems.append(f"header is {','.join(header)!r}, expected {SUBMISSION_HEADER!r}")
    issues: dict[str, list[str]] = {}
    if len(body) != len(test_list):
        problems.append(f"{len(body)} rows, but the test list has {len(test_list)} entries")
    for k, (n, f) in enumerate(body):
        if k < len(test_list) and (not f or f[0] != test_list.images[k]):
            issues.setdefault("order", []).append(f"line {n}: {f[0] if f else ''!r}, expected {test_list.images[k]!r}")
        for kind, value in _check_row(f)[1]:
            issues.setdefault(kind, []).append(f"line {n}: {value}")
    titles = {"order": "rows do not follow the test list order", **{k: t for k, (t, _, _) in _RULES.items()}}
    for kind, examples in issues.items():
        shown = "; ".join(examples[:max_examples])
        more = f" (+{len(examples) - max_examples} more)" if len(examples) > max_examples else ""
        problems.append(f"{titles[kind]}: {len(examples)} rows, e.g. {shown}{more}")
    return problems
