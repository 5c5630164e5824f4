"""Feature fingerprints and file hashes, without torch (the cache and loaders use these).

A fingerprint is the JSON record a backbone writes beside its features: spec, dim,
preprocessing, SHA-256 of the weights and library versions. Two fingerprints describe the
same features when the first four agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

SAME_FEATURE_FIELDS = ("spec", "dim", "preprocess", "weights_sha256")


def same_features(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fingerprints describe the same features (library versions may differ).

    Compared in their JSON form, so a fingerprint read back from a cache (lists) equals a
    fresh one (tuples).
    """

    def canon(fp: dict[str, Any]) -> str:
        return json.dumps({k: fp.get(k) for k in SAME_FEATURE_FIELDS}, sort_keys=True)

    return canon(a) == canon(b)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
