"""`abaw cache info`: what a feature cache holds (videos, frames, backbones, sizes, fingerprints)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from abaw.cache.store import FeatureStore


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def cache_info(store: str | os.PathLike | FeatureStore) -> dict[str, Any]:
    """A JSON-able summary of a cache."""
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, "r")
    videos = fs.videos()
    frames = faces = 0
    kinds: dict[str, int] = {}
    settings: dict[str, dict] = {}
    keys: dict[str, dict[str, Any]] = {}
    damaged: list[str] = []
    for v in list(videos):
        if not fs.has_video(v):  # checks sizes, metadata and every chunk's crc32c (GB/s)
            damaged.append(v)
            continue
        fdir = fs.path / "videos" / v / "feat"
        damaged += [f"{v}/feat/{p.name}" for p in (sorted(fdir.iterdir()) if fdir.exists() else [])
                    if p.is_dir() and not p.name.startswith(".") and not fs.has_features(v, p.name)]
        a = fs.video_attrs(v)
        frames += int(a.get("n_frames", 0))
        faces += int(a.get("n_faces", 0))
        kind = a.get("source", {}).get("kind", "imported" if "import" in a.get("source", {}) else "?")
        kinds[kind] = kinds.get(kind, 0) + 1
        s = a.get("settings")
        if s is not None:
            settings.setdefault(json.dumps(s, sort_keys=True), s)
        for k in fs.feature_keys(v):
            e = keys.setdefault(k, {"videos": 0, "frames": 0, "bytes": 0, "fingerprints": {}})
            e["videos"] += 1
            e["frames"] += int(a.get("n_frames", 0))
            e["bytes"] += _du(fs.path / "videos" / v / "feat" / k)
            fp = fs.fingerprint(v, k)
            sig = fp.get("weights_sha256", "?")
            if sig not in e["fingerprints"]:
                e["fingerprints"][sig] = {"spec": fp.get("spec"), "dim": fp.get("dim"),
                                          "input_size": (fp.get("preprocess") or {}).get("input_size"),
                                          "weights_sha256": sig, "videos": 0}
            e["fingerprints"][sig]["videos"] += 1
    for e in keys.values():
        e["fingerprints"] = list(e["fingerprints"].values())
        e["missing_videos"] = len(videos) - e["videos"]
    return {"path": str(fs.path), "videos": len(videos), "frames": frames, "faces": faces, "kinds": kinds,
            "backbones": keys, "settings": list(settings.values()), "bytes": _du(fs.path), "damaged": damaged}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable form of `cache_info`."""
    fr, fa = info["frames"], info["faces"]
    share = f"{100 * fa / fr:.1f}%" if fr else "n/a"
    label = {"video": "from videos", "frames": "from frame folders", "imported": "imported"}
    kinds = ", ".join(f"{n} {label.get(k, k)}" for k, n in sorted(info["kinds"].items()))
    lines = [f"{info['path']}: {info['videos']} videos ({kinds or 'none'}), {fr:,} frames, "
             f"{share} with a face, {_size(info['bytes'])} on disk"]
    w = max([len(k) for k in info["backbones"]] + [12])
    if info["backbones"]:
        lines.append(f"{'backbone key':{w}s} {'dim':>5s} {'videos':>7s} {'frames':>9s} {'size':>9s}  weights sha256")
    for k, e in sorted(info["backbones"].items()):
        fps = e["fingerprints"]
        dim = fps[0]["dim"] if fps else "?"
        sig = ", ".join(str(f["weights_sha256"])[:12] for f in fps)
        warn = "  (DIFFERENT fingerprints across videos)" if len(fps) > 1 else ""
        miss = f"  ({e['missing_videos']} videos lack it)" if e["missing_videos"] else ""
        lines.append(f"{k:{w}s} {dim!s:>5s} {e['videos']:>7d} {e['frames']:>9,d} {_size(e['bytes']):>9s}  {sig}{warn}{miss}")
        for f in fps:
            lines.append(f"    spec {f['spec']}  (input {f['input_size']})")
    for s in info["settings"]:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    if info.get("damaged"):
        lines.append(f"DAMAGED: {len(info['damaged'])} units (e.g. {', '.join(info['damaged'][:3])}); run "
                     f"`abaw cache verify {info['path']}` (and --repair)")
    return "\n".join(lines)
