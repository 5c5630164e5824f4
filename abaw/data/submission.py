"""Official MTL submission files: writing, reading and validating.

Format: header `image,valence,arousal,expression,aus`, then one row per test-list entry
in its order: `<video>/<frame>.jpg,<valence>,<arousal>,<expr 0-7>,<12 x 0/1>`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from abaw.data.labels import N_AU, N_EXPR, SUBMISSION_HEADER, parse_image_name
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


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read a submission-format prediction file (for `abaw evaluate`).

    Repeated images must carry identical predictions; they are merged.
    """
    path = os.fspath(path)
    header, body = _read_rows(path)
    if not header or header[0].strip().lower() != "image":
        raise FormatError(path, "expected a header line starting with 'image'", 1)
    seen: dict[str, int] = {}
    images: list[str] = []
    va: list[tuple[float, float]] = []
    expr: list[int] = []
    au: list[list[int]] = []
    first_line: list[int] = []
    for n, f in body:
        if len(f) != N_FIELDS:
            raise FormatError(path, f"expected {N_FIELDS} comma-separated fields, got {len(f)}", n)
        if parse_image_name(f[0]) is None:
            raise FormatError(path, f"bad image name {f[0]!r}", n)
        try:
            v, a = float(f[1]), float(f[2])
            e = int(f[3])
            u = [int(x) for x in f[4:]]
        except ValueError:
            raise FormatError(path, "non-numeric prediction", n) from None
        if not (math.isfinite(v) and math.isfinite(a)):
            raise FormatError(path, "valence/arousal is NaN or infinite", n)
        if not 0 <= e < N_EXPR:
            raise FormatError(path, f"expression {e} not in 0..{N_EXPR - 1}", n)
        if any(x not in (0, 1) for x in u):
            raise FormatError(path, "AU predictions must be 0 or 1", n)
        if f[0] in seen:
            i = seen[f[0]]
            if (va[i], expr[i], au[i]) != ((v, a), e, u):
                raise FormatError(
                    path, f"image {f[0]} predicted differently on lines {first_line[i]} and {n}", n)
            continue
        seen[f[0]] = len(images)
        images.append(f[0])
        va.append((v, a))
        expr.append(e)
        au.append(u)
        first_line.append(n)
    return Predictions(
        images=tuple(images),
        va=np.asarray(va, dtype=np.float32).reshape(-1, 2),
        expr=np.asarray(expr, dtype=np.int64),
        au=np.asarray(au, dtype=np.int8).reshape(-1, N_AU),
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

    def add(kind: str, example: str) -> None:
        issues.setdefault(kind, []).append(example)

    if len(body) != len(test_list):
        problems.append(f"{len(body)} rows, but the test list has {len(test_list)} entries")
    for k, (n, f) in enumerate(body):
        if k < len(test_list) and (not f or f[0] != test_list.images[k]):
            add("order", f"line {n}: {f[0] if f else ''!r}, expected {test_list.images[k]!r}")
        if len(f) != N_FIELDS:
            add("fields", f"line {n}: {len(f)} fields, expected {N_FIELDS}")
            continue
        try:
            v, a = float(f[1]), float(f[2])
        except ValueError:
            add("va-type", f"line {n}: {f[1]!r},{f[2]!r}")
            v = a = 0.0
        if math.isnan(v) or math.isnan(a):
            add("nan", f"line {n}")
        elif not (-1.0 <= v <= 1.0 and -1.0 <= a <= 1.0):
            add("va-range", f"line {n}: {v}, {a}")
        try:
            e = int(f[3])
            if not 0 <= e < N_EXPR:
                add("expr-range", f"line {n}: {e}")
        except ValueError:
            add("expr-type", f"line {n}: {f[3]!r}")
        if any(x not in ("0", "1") for x in f[4:]):
            add("au", f"line {n}: {','.join(f[4:])}")
    titles = {
        "order": "rows do not follow the test list order",
        "fields": f"rows without {N_FIELDS} comma-separated fields",
        "va-type": "non-numeric valence/arousal",
        "nan": "NaN valence/arousal",
        "va-range": "valence/arousal outside [-1, 1]",
        "expr-type": "non-integer expression",
        "expr-range": f"expression outside 0..{N_EXPR - 1}",
        "au": "AU values other than 0/1",
    }
    for kind, examples in issues.items():
        shown = "; ".join(examples[:max_examples])
        more = f" (+{len(examples) - max_examples} more)" if len(examples) > max_examples else ""
        problems.append(f"{titles[kind]}: {len(examples)} rows, e.g. {shown}{more}")
    return problems
