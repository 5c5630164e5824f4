"""Loading files that may be damaged or hostile: one-line `AbawError`s, never pickle.

Every loader names the file and the reason on one line; none runs pickled code:
`torch.load(weights_only=True)`, `np.load(allow_pickle=False)`, safetensors, and YAML
with `safe_load` semantics (no `!!python/...` tags).
"""

from __future__ import annotations

import os
from typing import Any, Self

from abaw.errors import AbawError


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:160]


def _missing(path: str) -> None:
    if not os.path.exists(path):
        raise AbawError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AbawError(f"{path}: is a folder, expected a file")


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a `.safetensors` file; a damaged file is a one-line AbawError."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    _missing(path)
    try:
        return load_file(path, device=device)
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ValueError...
        raise AbawError(f"{path}: not a readable .safetensors file ({_reason(e)})") from None


def load_torch_state(path: str | os.PathLike, map_location: Any = "cpu", trust_pickle: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` (plain tensors and containers only).

    `trust_pickle=True` runs the file's pickle (whole-model files the user vouches for).
    A damaged or unsafe file is a one-line AbawError naming it.
    """
    import torch

    path = os.fspath(path)
    _missing(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, zip errors...
        hint = "" if trust_pickle else "; only plain tensors are read (weights_only=True)"
        raise AbawError(f"{path}: not a readable torch file ({_reason(e)}{hint})") from None


class NpzArrays(dict):
    """The arrays of an `.npz`, read eagerly; `with load_npz(p) as z:` works like np.load."""

    @property
    def files(self) -> list[str]:
        return list(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def load_npz(path: str | os.PathLike) -> NpzArrays:
    """All arrays of an `.npz` (or one `.npy`, under the name `arr_0`), `allow_pickle=False`.

    Object arrays, a damaged zip or a pickle are a one-line AbawError naming the file.
    """
    import numpy as np

    path = os.fspath(path)
    _missing(path)
    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.ndarray):
            return NpzArrays(arr_0=z)
        with z:
            return NpzArrays({k: z[k] for k in z.files})
    except ValueError as e:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:2] == b"PK" or magic == b"\x93NUMPY":  # a real npz/npy whose arrays are pickled objects
            raise AbawError(f"{path}: holds Python objects (pickled arrays), which are not loaded") from None
        raise AbawError(f"{path}: not a readable .npz file ({_reason(e)})") from None
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, OSError...
        raise AbawError(f"{path}: not a readable .npz file ({_reason(e)})") from None


def load_yaml(text: str, where: str) -> Any:
    """YAML text parsed with `yaml.safe_load`; an error (e.g. a `!!python/object` tag) is
    one line naming `where` (a file, or an option like `--set lr=...`)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None and "\n" in text.strip() else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise AbawError(f"{where}{line}: not valid YAML ({problem})"[:300]) from None
