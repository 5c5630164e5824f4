"""`abaw export-system`: a trained system as one self-contained, shareable folder, and
loading it back from a folder, a URL or a Hugging Face Hub repo (`--system`).

    SYSTEM/system.json                 the manifest (below)
    SYSTEM/heads/<i>.safetensors       each run's head weights (no pickle)

(`-o SYSTEM.tar` / `SYSTEM.zip`: the same files in one archive.)

The manifest (`"abaw_system": 1`) holds: the abaw version and date; which runs serve
each task; per run its TrainConfig, ModelSpec, fitted post-processing (smoothing
windows, AU thresholds), training time scale (`train_gap`: the median frame gap of its
training windows, so dense frames are predicted as the run was trained; null when not
recorded) and its heads file with SHA-256; for a blend (`abaw blend`), `blend`: the
per-task run weights, their space and the blend's own post-processing; the backbones (spec,
preprocessing, weight SHA-256 and source: everything `create_backbone` needs to rebuild
them, refusing other weights); the label sets (EXPR and AU orders); the crop (112 px,
5-point template); a summary of the training data (videos, labelled frames per task,
annotation files, whether synthetic).

Remote systems (`file://`, `http(s)://` URLs of the folder or of an archive, or
`hf:OWNER/REPO[@REV]` with huggingface_hub) and archives are downloaded / unpacked once into `$ABAW_CACHE/systems/` (default
`~/.cache/abaw/systems/`): `system.json` first, then every file it lists, each SHA-256
checked against the manifest before it is moved into place.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abaw.errors import AbawError
from abaw.results import Result

SYSTEM_VERSION = 1
MANIFEST = "system.json"
ARCHIVES = (".tar", ".zip")


@dataclass(frozen=True)
class ExportResult(Result):
    out: str
    tasks: dict[str, list[str]]
    files: int
    synthetic: bool

    def format(self) -> str:
        per = "; ".join(f"{t.upper()}: {len(r)} run(s)" for t, r in self.tasks.items())
        return (f"wrote system {self.out} ({per}; {self.files} files)"
                + ("; trained on SYNTHETIC data" if self.synthetic else ""))


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_system(runs_or_composed: list[str] | tuple[str, ...] | str, out: str | os.PathLike,
                  overwrite: bool = False) -> ExportResult:
    """Write the system of run folders (or of a composed.json / search folder) into `out`."""
    import shutil
    import tempfile

    from safetensors.torch import save as st_save

    from abaw import __version__
    from abaw.config import to_dict
    from abaw.data.labels import AU_NAMES, EXPR_NAMES
    from abaw.io import atomic_write, write_json
    from abaw.pipeline.predict.system import load_system
    from abaw.pipeline.train.outputs import weights_json

    srcs = [runs_or_composed] if isinstance(runs_or_composed, (str, os.PathLike)) else list(runs_or_composed)
    composed = None
    if len(srcs) == 1 and (Path(srcs[0]).is_file() or (Path(srcs[0]) / "composed.json").exists()):
        composed = srcs[0]
    system = load_system(() if composed else [str(s) for s in srcs], composed)
    dest = Path(out)
    archive = dest.suffix.lower() in ARCHIVES
    if archive:
        if dest.exists() and not overwrite:
            raise AbawError(f"{dest}: exists; choose another -o or pass --overwrite")
    elif dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise AbawError(f"{dest}: exists and is not empty; choose another -o or pass --overwrite")
    runs = system.all_runs()
    ids = {str(r.path): f"{i:02d}_{r.path.name}" for i, r in enumerate(runs)}
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=dest.parent if dest.parent.exists() else None))
    try:
        (tmp / "heads").mkdir()
        run_entries, data, files = {}, [], {}
        for r in runs:
            rid = ids[str(r.path)]
            rel = f"heads/{rid}.safetensors"
            sd = {k: v.detach().cpu().contiguous() for k, v in r.model.state_dict().items()}
            with atomic_write(tmp / rel, "wb") as f:
                f.write(st_save(sd))
            files[rel] = _sha(tmp / rel)
            td = r.training_data()
            data.append(td)
            run_entries[rid] = {"source": r.path.name, "heads": rel, "config": to_dict(r.config),
                                "spec": to_dict(r.spec), "postprocess": to_dict(r.postprocess),
                                "fingerprints": {k: r.fingerprints.get(k, {}) for k in r.keys},
                                "train_gap": r.train_gap,
                                "training_data": td}
        synthetic = any(d["synthetic"] for d in data)
        manifest = {
            "abaw_system": SYSTEM_VERSION, "abaw_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tasks": {t: [ids[str(r.path)] for r in system.runs[t]] for t in system.tasks},
            "runs": run_entries, "backbones": system.fingerprints(),
            "labels": {"expr": list(EXPR_NAMES), "au": list(AU_NAMES)},
            "preprocessing": {"detector": "mtcnn", "crop_size": 112, "alignment": "5-point similarity to the "
                              "standard 112 px template (abaw.extract.faces)"},
            "synthetic": synthetic, "files": files,
        }
        if system.va_dims:  # VA composed per dimension: the runs of valence and of arousal
            manifest["va_dims"] = {d: [ids[str(r.path)] for r in rs] for d, rs in system.va_dims.items()}
        if system.blended:  # `abaw blend`: per-task run weights, their space, the blend's post-processing
            manifest["blend"] = {"weights": {t: weights_json(w) for t, w in system.weights.items()}, "space": system.space,
                                 "postprocess": to_dict(system.postprocess)}
        write_json(tmp / MANIFEST, manifest)
        if archive:
            _archive(tmp, dest)
        else:
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out=str(dest), tasks=manifest["tasks"], files=len(files) + 1, synthetic=synthetic)


def _archive(folder: Path, dest: Path) -> None:
    """`folder`'s files (manifest first) as one .tar or .zip, written atomically."""
    import io
    import tarfile
    import zipfile

    from abaw.io import atomic_write

    names = [MANIFEST] + sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                                if p.is_file() and p.name != MANIFEST)
    buf = io.BytesIO()
    if dest.suffix.lower() == ".zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for n in names:
                z.write(folder / n, n)
    else:
        with tarfile.open(fileobj=buf, mode="w") as t:
            for n in names:
                t.add(folder / n, n, recursive=False)
    with atomic_write(dest, "wb") as f:
        f.write(buf.getvalue())


def _unpack(blob: bytes, where: str) -> Path:
    """An archived system into the cache (keyed by the archive's SHA-256); members that are
    not plain files inside the folder are refused."""
    import io
    import shutil
    import tarfile
    import tempfile
    import zipfile

    local = systems_cache() / hashlib.sha256(blob).hexdigest()[:32]
    if (local / MANIFEST).exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=local.parent))
    try:
        try:
            if where.lower().endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(blob)) as z:
                    members = [(i.filename, lambda i=i: z.read(i)) for i in z.infolist() if not i.is_dir()]
                    _write_members(members, tmp, where)
            else:
                with tarfile.open(fileobj=io.BytesIO(blob)) as t:
                    bad = [m.name for m in t.getmembers() if not (m.isfile() or m.isdir())]
                    if bad:
                        raise AbawError(f"{where}: archive member {bad[0]!r} is not a plain file")
                    members = [(m.name, lambda m=m: t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
                    _write_members(members, tmp, where)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise AbawError(f"{where}: not a readable system archive ({type(e).__name__}: {e})") from None
        if not (tmp / MANIFEST).exists():
            raise AbawError(f"{where}: the archive holds no {MANIFEST}")
        if local.exists():
            shutil.rmtree(local)
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def _write_members(members: list, root: Path, where: str) -> None:
    for name, read in members:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise AbawError(f"{where}: archive member {name!r} leaves the system folder")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(read())


# ---------------------------------------------------------------------- fetching


def systems_cache() -> Path:
    root = os.environ.get("ABAW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "abaw")
    return Path(root) / "systems"


def _get(url: str) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - the user's URL
            return r.read()
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, OSError, ValueError
        raise AbawError(f"{url}: cannot download ({type(e).__name__}: {str(e).splitlines()[0][:150]})") from None


def _manifest(data: bytes, where: str) -> dict[str, Any]:
    import json

    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise AbawError(f"{where}: not an abaw system manifest ({type(e).__name__})") from None
    if not isinstance(m, dict) or m.get("abaw_system") != SYSTEM_VERSION:
        raise AbawError(f"{where}: not an abaw system manifest (no \"abaw_system\": {SYSTEM_VERSION})")
    return m


def fetch_system(url: str) -> Path:
    """Download the system at `url` (its folder's URL) into the cache; return the local folder."""
    from abaw.io import atomic_write

    base = url.rstrip("/")
    if base.endswith("/" + MANIFEST):
        base = base[: -len(MANIFEST) - 1]
    raw = _get(f"{base}/{MANIFEST}")
    m = _manifest(raw, f"{base}/{MANIFEST}")
    local = systems_cache() / hashlib.sha256(raw).hexdigest()[:32]
    local.mkdir(parents=True, exist_ok=True)
    for rel, want in sorted(m.get("files", {}).items()):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise AbawError(f"{base}/{MANIFEST}: file name {rel!r} leaves the system folder")
        dest = local / rel
        if dest.exists() and _sha(dest) == want:
            continue
        blob = _get(f"{base}/{rel}")
        got = hashlib.sha256(blob).hexdigest()
        if got != want:
            raise AbawError(f"{base}/{rel}: SHA-256 {got[:16]}... differs from the manifest's {want[:16]}...")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(dest, "wb") as f:
            f.write(blob)
    with atomic_write(local / MANIFEST, "wb") as f:
        f.write(raw)
    return local


def _hub(ref: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise AbawError(f"{ref}: hf: systems need huggingface_hub (pip install huggingface_hub)") from None
    repo, _, rev = ref[3:].partition("@")
    try:
        return Path(snapshot_download(repo_id=repo, revision=rev or None, cache_dir=str(systems_cache() / "hf")))
    except Exception as e:  # noqa: BLE001 - network and hub errors
        raise AbawError(f"{ref}: cannot download from the Hugging Face Hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:150]})") from None


def resolve_system_dir(ref: str) -> Path:
    """A local system folder for a folder path, URL or hf: reference (downloaded when remote)."""
    is_archive = ref.lower().endswith(ARCHIVES)
    if ref.startswith(("http://", "https://", "file://")):
        return _unpack(_get(ref), ref) if is_archive else fetch_system(ref)
    if ref.startswith("hf:"):
        return _hub(ref)
    p = Path(ref)
    if is_archive and p.is_file():
        return _unpack(p.read_bytes(), ref)
    if not (p / MANIFEST).exists():
        raise AbawError(f"{ref}: not a system (no {MANIFEST}; expected `fer`, a folder written by "
                        "`abaw export-system`, a URL or hf:REPO)")
    return p


def load_exported(ref: str, device: str = "cpu"):
    """The crop system (RunsSystem) of an exported system; every file SHA-256 checked."""
    from abaw.config import from_dict
    from abaw.heads.model import ModelSpec, build_model
    from abaw.io import read_json
    from abaw.pipeline.predict.heads_system import RunsSystem
    from abaw.pipeline.predict.system import System
    from abaw.pipeline.train.config import TrainConfig
    from abaw.pipeline.train.outputs import weights_from_json
    from abaw.pipeline.train.postprocess import PostProcess
    from abaw.pipeline.train.run import Run
    from abaw.runtime import resolve_device
    from abaw.safeload import load_safetensors

    folder = resolve_system_dir(ref)
    m = read_json(folder / MANIFEST)
    if m.get("abaw_system") != SYSTEM_VERSION:
        raise AbawError(f"{folder / MANIFEST}: not an abaw system manifest")
    for rel, want in m.get("files", {}).items():
        if not (folder / rel).exists() or _sha(folder / rel) != want:
            raise AbawError(f"{folder / rel}: missing or its SHA-256 differs from the manifest")
    dev = resolve_device(device)
    runs: dict[str, Any] = {}
    try:
        for rid, e in m["runs"].items():
            spec = from_dict(ModelSpec, e["spec"])
            model = build_model(spec)
            model.load_state_dict(load_safetensors(folder / e["heads"]))
            runs[rid] = Run(path=folder / "heads" / rid, config=TrainConfig.from_dict(e["config"]), spec=spec,
                            model=model.to(dev).eval(), postprocess=from_dict(PostProcess, e["postprocess"]),
                            fingerprints=e.get("fingerprints", {}), device=dev,
                            train_gap=None if e.get("train_gap") is None else float(e["train_gap"]))
        blend = m.get("blend")
        extra = {} if not blend else {"weights": {t: weights_from_json(w) for t, w in blend["weights"].items()},
                                      "space": str(blend["space"]),
                                      "postprocess": from_dict(PostProcess, blend["postprocess"])}
        system = System({t: [runs[r] for r in rs] for t, rs in m["tasks"].items()},
                        va_dims={d: [runs[r] for r in rs] for d, rs in m.get("va_dims", {}).items()}, **extra)
    except (KeyError, TypeError, RuntimeError) as e:
        raise AbawError(f"{folder / MANIFEST}: cannot rebuild the system ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:150]})") from None
    return RunsSystem(system, device=str(dev), name=f"exported system {ref}", synthetic=bool(m.get("synthetic")),
                      info={k: m[k] for k in ("abaw_version", "created", "tasks", "synthetic", "backbones")
                            if k in m} | {"ref": ref, "folder": str(folder)})
