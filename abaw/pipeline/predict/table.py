"""The per-frame results table of `abaw predict --video` / `abaw.predict_video`: columns,
writing (CSV, Parquet) and reading back with the same dtypes.

One row per face and frame; a frame in which no face was found has one row with
`face = 0` and empty cells (pandas `<NA>`) in every face column. Columns, in order:

    input, frame, timestamp, face, face_id, face_score, face_x, face_y, face_w, face_h,
    lm1_x, lm1_y, ... lm5_x, lm5_y, valence, arousal, expression, expression_name,
    p_Neutral ... p_Other, AU01_prob ... AU26_prob, AU01 ... AU26, synthetic

- `frame`: 1-based (videos: decode order; frame folders: the file's number; images: 1);
  `timestamp`: seconds (empty for images and frame folders);
- `face_id`: the person (0, 1, ... by `--face`: `all` tracks ids; `left-right`: 0 left,
  1 right; `track` / `largest`: 0); box in frame pixels (x, y = top-left corner);
- landmarks `lm1..lm5` = left eye, right eye, nose, left and right mouth corner (as seen
  in the image, MTCNN's order), frame pixels;
- `expression`: 0-7 in ABAW's order, `expression_name`, then the 8 probabilities;
- `AUxx_prob` and `AUxx` (0/1 at the system's fitted threshold): ABAW's 12 AUs with
  zero-padded FACS numbers (AU1 -> AU01, AU2 -> AU02, AU4 -> AU04, AU6 -> AU06, AU7 ->
  AU07; AU10, AU12, AU15, AU23, AU24, AU25, AU26 unchanged);
- a task the system does not predict leaves its columns empty; `synthetic` is true when
  the system was trained on synthetic data.

Integer columns are pandas nullable integers (`Int64`, `Int8`), so they stay integers with
empty cells; CSV writes `<NA>` as an empty field and `read_results` restores the dtypes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from abaw.data.labels import AU_NAMES, EXPR_NAMES, N_AU
from abaw.errors import AbawError

AU_COLUMNS: tuple[str, ...] = tuple(f"AU{int(a[2:]):02d}" for a in AU_NAMES)
EXPR_COLUMNS: tuple[str, ...] = tuple(f"p_{n}" for n in EXPR_NAMES)
LANDMARK_COLUMNS: tuple[str, ...] = tuple(f"lm{i}_{c}" for i in range(1, 6) for c in "xy")
FORMATS = ("csv", "parquet")

DTYPES: dict[str, str] = {
    "input": "string", "frame": "Int64", "timestamp": "float64", "face": "Int8", "face_id": "Int64",
    "face_score": "float64", "face_x": "float64", "face_y": "float64", "face_w": "float64", "face_h": "float64",
    **{c: "float64" for c in LANDMARK_COLUMNS}, "valence": "float64", "arousal": "float64",
    "expression": "Int64", "expression_name": "string", **{c: "float64" for c in EXPR_COLUMNS},
    **{f"{c}_prob": "float64" for c in AU_COLUMNS}, **{c: "Int8" for c in AU_COLUMNS}, "synthetic": "boolean",
}
COLUMNS: tuple[str, ...] = tuple(DTYPES)


def results_frame(input_name: str, frame: np.ndarray, timestamp: np.ndarray, face_id: np.ndarray,
                  score: np.ndarray, box: np.ndarray, landmarks: np.ndarray, outputs: dict[str, np.ndarray],
                  au_thresholds: np.ndarray | None = None, synthetic: bool = False):
    """The table of one input. `face_id` -1 marks a frame without a face; `box` x0,y0,x1,y1
    [N, 4]; `landmarks` [N, 5, 2]; `outputs` task -> [N, ...] (NaN rows where no face)."""
    import pandas as pd

    n = len(frame)
    has = np.asarray(face_id) >= 0
    box = np.asarray(box, np.float64).reshape(n, 4)
    lm = np.asarray(landmarks, np.float64).reshape(n, 10)

    def masked(a: np.ndarray, ok: np.ndarray, dtype: str):
        arr = pd.array(np.where(ok, a, 0), dtype=dtype)
        arr[~ok] = pd.NA
        return arr

    cols: dict[str, Any] = {
        "input": pd.array([input_name] * n, dtype="string"),
        "frame": pd.array(np.asarray(frame, np.int64), dtype="Int64"),
        "timestamp": np.asarray(timestamp, np.float64),
        "face": pd.array(has.astype(np.int8), dtype="Int8"),
        "face_id": masked(np.asarray(face_id, np.int64), has, "Int64"),
        "face_score": np.where(has, score, np.nan),
        "face_x": np.where(has, box[:, 0], np.nan), "face_y": np.where(has, box[:, 1], np.nan),
        "face_w": np.where(has, box[:, 2] - box[:, 0], np.nan), "face_h": np.where(has, box[:, 3] - box[:, 1], np.nan),
    }
    for j, c in enumerate(LANDMARK_COLUMNS):
        cols[c] = np.where(has, lm[:, j], np.nan)
    va = outputs.get("va")
    cols["valence"] = np.where(has, va[:, 0], np.nan) if va is not None else np.full(n, np.nan)
    cols["arousal"] = np.where(has, va[:, 1], np.nan) if va is not None else np.full(n, np.nan)
    expr = outputs.get("expr")
    ok_e = has if expr is None else has & np.isfinite(expr).all(1)
    if expr is None:
        ok_e = np.zeros(n, bool)
    label = np.nan_to_num(expr).argmax(1) if expr is not None else np.zeros(n, np.int64)
    cols["expression"] = masked(label, ok_e, "Int64")
    cols["expression_name"] = pd.array([EXPR_NAMES[k] if ok else pd.NA for k, ok in zip(label, ok_e)], dtype="string")
    for j, c in enumerate(EXPR_COLUMNS):
        cols[c] = np.where(has, expr[:, j], np.nan) if expr is not None else np.full(n, np.nan)
    au = outputs.get("au")
    thr = np.full(N_AU, 0.5) if au_thresholds is None else np.asarray(au_thresholds, np.float64)
    for j, c in enumerate(AU_COLUMNS):
        cols[f"{c}_prob"] = np.where(has, au[:, j], np.nan) if au is not None else np.full(n, np.nan)
    for j, c in enumerate(AU_COLUMNS):
        p = au[:, j] if au is not None else np.full(n, np.nan)
        cols[c] = masked((np.nan_to_num(p) >= thr[j]).astype(np.int8), has & np.isfinite(p), "Int8")
    cols["synthetic"] = pd.array([bool(synthetic)] * n, dtype="boolean")
    return pd.DataFrame(cols, columns=list(COLUMNS)).astype(DTYPES)


def empty_frame():
    import pandas as pd

    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in DTYPES.items()})


def _parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise AbawError("--format parquet needs pyarrow, which is not installed (pip install pyarrow); "
                        "or use the default CSV") from None


def write_results(df, path: str | os.PathLike, fmt: str = "csv") -> Path:
    """Write the table atomically as CSV (empty cells for <NA>) or Parquet."""
    import io

    from abaw.io import atomic_write

    if fmt not in FORMATS:
        raise AbawError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "parquet":
        _parquet()
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        with atomic_write(path, "wb") as f:
            f.write(buf.getvalue())
        return path
    text = df.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def read_results(path: str | os.PathLike):
    """A results table written by `abaw predict` (CSV or Parquet) with its dtypes restored."""
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        cands = [p / "predictions.csv", p / "predictions.parquet"]
        p = next((c for c in cands if c.exists()), cands[0])
    if not p.exists():
        raise AbawError(f"{p}: no such results file")
    if p.suffix == ".parquet":
        _parquet()
        df = pd.read_parquet(p)
    else:
        try:
            df = pd.read_csv(p, dtype={c: ("string" if t == "string" else "object" if t == "boolean" else t)
                                       for c, t in DTYPES.items()}, keep_default_na=False, na_values=[""])
        except (ValueError, pd.errors.ParserError) as e:
            raise AbawError(f"{p}: not an abaw results table ({str(e).splitlines()[0][:150]})") from None
        if "synthetic" in df:
            df["synthetic"] = df["synthetic"].map({"True": True, "False": False, True: True, False: False})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise AbawError(f"{p}: not an abaw results table (no columns {', '.join(missing[:4])})")
    return df.astype(DTYPES)
