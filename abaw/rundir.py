"""Run folders: what each kind of run writes, clearing them, config and data comparison,
training state.

A run records the identity of its data (`data_identity`: a SHA-256 of each annotation
set's labels and the fingerprint of each feature key); a resume or rerun into the same
folder compares it (`check_identity`) and refuses other data with a one-line diff.

Both trainers (`train-heads`, `finetune`) keep their resumable state in one folder whose
files are listed in a `RunLayout`; the state is saved atomically and read back with
`torch.load(weights_only=True)` (plain tensors and JSON types only).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abaw.claims import CLAIM_FILE
from abaw.data.labels import TASKS
from abaw.errors import AbawError
from abaw.fingerprint import SAME_FEATURE_FIELDS
from abaw.io import atomic_write


@dataclass(frozen=True)
class RunLayout:
    """The files one kind of run writes into its folder."""

    kind: str
    config: str  # the config file: its presence marks a run folder of this kind
    files: tuple[str, ...]  # every file the run writes (config included)

    def holds_run(self, out: str | os.PathLike) -> bool:
        """Whether `out` holds at least one file of this kind of run."""
        out = Path(out)
        return out.is_dir() and any((out / name).exists() for name in self.files)

    def clear(self, out: str | os.PathLike) -> None:
        """Remove this run's files from `out` (other files are left alone)."""
        for name in self.files:
            with contextlib.suppress(FileNotFoundError):
                (Path(out) / name).unlink()


HEADS_RUN = RunLayout("train-heads run", "config.json", (
    "config.json", "data.json", "metrics.json", "best.pt", *(f"best-{t}.pt" for t in TASKS), "last.pt",
    "val_outputs.npz", "val_outputs_honest.npz", "postprocess.json", "curves.png",
    "result.json"))  # best-<task>.pt: select=task, while training
FINETUNE_RUN = RunLayout("fine-tuning run", "finetune_config.json", (
    "finetune_config.json", "state.pt", "history.json", "learning_curve.png", "backbone.json",
    "backbone.safetensors", "head.safetensors"))


def is_empty(out: str | os.PathLike) -> bool:
    """True for a folder that does not exist or holds nothing (but a worker's claim on it,
    see abaw/claims.py)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AbawError(f"{out}: exists and is not a folder; choose another --out")
    return not out.exists() or not any(not p.name.startswith(CLAIM_FILE) for p in out.iterdir())


def config_diff(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """`key: saved (run) vs given (now)` for each recorded setting that differs."""
    keys = list(saved) + [k for k in given if k not in saved]
    return [f"{k}: {saved.get(k)!r} (run) vs {given.get(k)!r} (now)" for k in keys if saved.get(k) != given.get(k)]


def labels_sha256(ann: Any) -> str:
    """SHA-256 of an annotation set's content (video ids, frame numbers, VA, EXPR, AU), so
    the same labels hash alike whether read from a file or selected in memory."""
    import hashlib

    import numpy as np

    h = hashlib.sha256("\n".join(ann.videos).encode("utf-8"))
    for a, dt in ((ann.video_idx, "<i8"), (ann.frame, "<i8"), (ann.va, "<f4"), (ann.expr, "<i8"), (ann.au, "<i1")):
        h.update(np.ascontiguousarray(np.asarray(a).astype(dt, copy=False)).tobytes())
    return h.hexdigest()


def feature_fingerprints(source: Any, keys: tuple[str, ...] | list[str], videos: list[str] | tuple[str, ...]
                         ) -> dict[str, dict[str, Any]]:
    """Fingerprint per key of a FeatureTable (`source.fingerprints`) or of a FeatureStore
    (the first of `videos` that has the key; the loader checks the others agree)."""
    if hasattr(source, "fingerprints"):
        return {k: source.fingerprints.get(k, {}) for k in keys}
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        v = next((v for v in videos if source.has_features(v, k, deep=False)), None)
        out[k] = source.fingerprint(v, k) if v is not None else {}
    return out


def data_identity(annotations: dict[str, Any], fingerprints: dict[str, dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """What a run was trained on: per annotation set (e.g. {"train": ann, "val": ann}) the
    SHA-256 of its labels (their content: a subset selected in memory differs from its
    file), row count, and the names and SHA-256 of its source files; per feature key the
    fingerprint fields that define the features (spec, dim, preprocessing, weights hash)."""
    from abaw.fingerprint import file_sha256

    anns = {}
    for name, a in annotations.items():
        srcs = [s for s in getattr(a, "sources", ()) if os.path.isfile(s)]
        anns[name] = {"sha256": labels_sha256(a), "rows": len(a.frame), "files": [os.path.basename(s) for s in srcs],
                      "file_sha256": [file_sha256(s) for s in srcs]}
    feats = {k: {f: fp.get(f) for f in SAME_FEATURE_FIELDS} for k, fp in (fingerprints or {}).items()}
    return json.loads(json.dumps({"annotations": anns, "features": feats}))  # JSON form: compares with a file


def _short(x: Any) -> str:
    s = str(x)
    return f"{s[:8]}.." if len(s) > 12 and all(c in "0123456789abcdef" for c in s) else repr(x)


def identity_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One phrase per difference between two `data_identity` records, e.g.
    `val annotations sha256 ab12cd34.. != 9f8e7d6c.. (val.txt)`, `features k: dim 6 != 8`."""
    out = []
    sa, na = saved.get("annotations", {}), now.get("annotations", {})
    for name in list(sa) + [n for n in na if n not in sa]:
        a, b = sa.get(name), na.get(name)
        if a is None or b is None:
            out.append(f"{name} annotations {'missing now' if b is None else 'not in the run'}")
        elif a.get("sha256") != b.get("sha256"):
            now_f, was_f = b.get("files") or [], a.get("files") or []
            names = ", ".join(now_f or was_f) + (f"; was {', '.join(was_f)}" if now_f and was_f and now_f != was_f
                                                 else "")
            where = f" ({names})" if names else ""
            rows = f", {a.get('rows')} != {b.get('rows')} rows" if a.get("rows") != b.get("rows") else ""
            out.append(f"{name} annotations sha256 {_short(a.get('sha256'))} != {_short(b.get('sha256'))}{rows}{where}")
        elif a.get("file_sha256") is not None and a.get("file_sha256") != b.get("file_sha256"):
            h0, h1 = a.get("file_sha256") or [""], b.get("file_sha256") or [""]
            names = ", ".join(b.get("files") or a.get("files") or [])
            out.append(f"{name} annotation file sha256 {_short(h0[0])} != {_short(h1[0])} ({names}; same labels)")
    sf, nf = saved.get("features", {}), now.get("features", {})
    for k in list(sf) + [k for k in nf if k not in sf]:
        a, b = sf.get(k), nf.get(k)
        if a is None or b is None:
            out.append(f"features {k!r} {'missing now' if b is None else 'not in the run'}")
            continue
        parts = [f"{f} {_short(a.get(f))} != {_short(b.get(f))}" for f in SAME_FEATURE_FIELDS if a.get(f) != b.get(f)]
        if parts:
            out.append(f"features {k!r}: " + ", ".join(parts))
    return out


def check_identity(out: str | os.PathLike, saved: dict[str, Any] | None, now: dict[str, Any],
                   action: str = "resume", hint: str = "use --overwrite to start again or choose another --out"
                   ) -> None:
    """AbawError `OUT: cannot <action>, the data differs: ...` unless `now` matches the
    recorded identity (runs recorded before identities existed are not checked)."""
    if not saved:
        return
    diff = identity_diff(saved, now)
    if diff:
        more = f" (and {len(diff) - 2} more)" if len(diff) > 2 else ""
        raise AbawError(f"{out}: cannot {action}, the data differs: {'; '.join(diff[:2])}{more}; {hint}")


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically `torch.save` a training state (tensors and JSON types only)."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_state(path: str | os.PathLike, version: int | None = None, hint: str = "use --overwrite to start again"
               ) -> dict[str, Any]:
    """A state written by `save_state`, read with `weights_only=True`; AbawError naming the file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise AbawError(f"{path}: cannot read the training state ({str(e).splitlines()[0][:160]}); {hint}") from None
    if not isinstance(state, dict) or (version is not None and state.get("version") != version):
        raise AbawError(f"{path}: not an abaw training state (version {version}); {hint}")
    return state
