"""`--system NAME|PATH|URL|hf:REPO`: a built-in crop system or an exported one."""

from __future__ import annotations

from typing import Any

from abaw.pipeline.predict.zeroshot import BUILTIN_SYSTEMS, builtin_system


def open_system(ref: str, device: str = "cpu") -> Any:
    """The crop system `ref` names: built in (`fer`), else an exported system (folder or URL)."""
    if ref in BUILTIN_SYSTEMS:
        return builtin_system(ref, device)
    from abaw.pipeline.predict.export import load_exported

    return load_exported(ref, device)
