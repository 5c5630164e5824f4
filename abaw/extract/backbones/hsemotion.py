"""HSEmotion / EmotiEffLib AffectNet models as frozen backbones (`hsemotion:<model>`).

    hsemotion:enet_b0_8_va_mtl?trust_pickle=1      1280-d, 224 px (the ABAW favourite)
    hsemotion:enet_b2_8?trust_pickle=1             1408-d, 260 px
    hsemotion:enet_b0_8_best_afew?file=/path/enet_b0_8_best_afew.pt&trust_pickle=1

The files are downloaded once from the EmotiEffLib repository, at a pinned commit, into
`$ABAW_CACHE/hsemotion/` (default `~/.cache/abaw/hsemotion/`), written atomically and
verified before use. Upstream publishes no SHA-256 for them, but the git object id of
each file at that commit is a content hash (SHA-1 of `blob <size>\\0<bytes>`): the table
below pins those ids. A verified download records the file's SHA-256 next to it, and
every later use re-checks that SHA-256. `sha256=HEX` pins a SHA-256 yourself (needed for
`url=` or `file=` sources not in the table); anything unverifiable is refused.

These files are whole pickled timm models, and unpickling can run code: they load only
with `trust_pickle=1`. Even then no model class from the file is used: classes outside
torch are replaced by inert stand-ins, the tensors are collected into a state dict, and
that is loaded into a fresh timm model of the architecture named in the table (checked
key by key and shape by shape), with the classifier dropped.

`output=features` (default) gives the pooled embedding; `output=logits` the classifier's
outputs (enet_b0_8_va_mtl: 8 expression logits then valence and arousal); `output=both`
their concatenation `[embedding, logits]`, which is what HSEmotion's best ABAW MTL
result feeds to its heads.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from abaw.errors import AbawError
from abaw.extract.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocess
from abaw.extract.backbones.registry import (
    PREPROCESS_OPTIONS,
    TRUST_PICKLE,
    Option,
    bool_option,
    parse_spec,
    preprocess_from_options,
    register_backbone,
    spec_key,
)
from abaw.fingerprint import file_sha256

COMMIT = "f1df0e8548c666d268826e50b7de107fd5553e9d"  # sb-ai-lab/EmotiEffLib, "Update full links in the repo"
URL = "https://github.com/sb-ai-lab/EmotiEffLib/raw/{commit}/models/affectnet_emotions/{name}.pt"


@dataclass(frozen=True)
class HSModel:
    """A known EmotiEffLib model: timm architecture(s), input size, pinned hashes."""

    archs: tuple[str, ...]  # timm architectures to try (the first whose tensors match wins)
    size: int
    git_blob: str  # git object id of the .pt file at COMMIT
    sha256: str | None = None  # pin when known
    head: tuple[str, ...] = ("classifier.",)  # parameter prefixes of the dropped classifier


MODELS: dict[str, HSModel] = {
    "enet_b0_8_best_afew": HSModel(("tf_efficientnet_b0",), 224, "9540c8beff661f1c2fca16de63b530cce24bb17d"),
    "enet_b0_8_best_vgaf": HSModel(("tf_efficientnet_b0",), 224, "7219cfb037209b253ea8b81cf969e60a00e9181c"),
    "enet_b0_8_va_mtl": HSModel(("tf_efficientnet_b0",), 224, "b7223bd1ab092a1b5a42bc04a5f4fbfe4d9f8b9b"),
    "enet_b2_7": HSModel(("tf_efficientnet_b2",), 260, "5a8ccbb17913461296003be726a22b6fc40d602b"),
    "enet_b2_8": HSModel(("tf_efficientnet_b2",), 260, "eed81e6368877e89f8a99cfabadae7c3ddc3a949"),
    # which MobileViT is not documented upstream: the one whose tensors fit is used
    "mobilevit_va_mtl": HSModel(("mobilevit_s", "mobilevit_xs", "mobilevit_xxs", "mobilevitv2_050",
                                 "mobilevitv2_075", "mobilevitv2_100"), 224,
                                "d648cb1a20a5b1ab0af64192ec9be39e5cdd3961", head=("head.fc.",)),
}


def cache_dir() -> Path:
    """Where downloaded weights live: $ABAW_CACHE, else ~/.cache/abaw."""
    root = os.environ.get("ABAW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "abaw")
    return Path(root)


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file's content (SHA-1 of `blob <size>\\0` + bytes)."""
    size = os.path.getsize(path)
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def _fetch(url: str, dst: BinaryIO) -> None:
    """Stream `url` into `dst` (any urllib scheme, incl. file://). Replaceable in tests."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - URL comes from the pinned table or the user
        total = int(r.headers.get("Content-Length") or 0)
        with tqdm(total=total or None, unit="B", unit_scale=True, desc=os.path.basename(url.split("?")[0]),
                  disable=total < (1 << 20)) as bar:
            while b := r.read(1 << 20):
                dst.write(b)
                bar.update(len(b))


FETCH: Callable[[str, BinaryIO], None] = _fetch


def _verify(path: Path, sha256: str | None, git_blob: str | None) -> tuple[str, str]:
    """Check a file against the pins; returns (its sha256, how it was verified)."""
    got = file_sha256(path)
    if sha256:
        if got != sha256.lower():
            raise AbawError(f"{path}: SHA-256 {got} does not match the expected {sha256.lower()}")
        return got, "sha256"
    if git_blob:
        blob = git_blob_sha1(path)
        if blob != git_blob:
            raise AbawError(f"{path}: content (git object {blob}) does not match the pinned {git_blob}")
        return got, "git blob id"
    raise AbawError(f"{path}: no checksum to verify it against; pass sha256=<hex> (the file's SHA-256) "
                    "only if you trust its source")


def fetch_verified(name: str, url: str, sha256: str | None = None, git_blob: str | None = None,
                   directory: Path | None = None) -> Path:
    """Download `url` once into the user cache as `name`, verified; return its path.

    A cached copy is re-verified against its recorded SHA-256 (or the pins) on every use.
    """
    d = (directory or cache_dir()) / "hsemotion"
    d.mkdir(parents=True, exist_ok=True)
    target = d / name
    meta_path = d / f"{name}.json"
    if target.exists():
        recorded = None
        if meta_path.exists():
            try:
                recorded = json.loads(meta_path.read_text())["sha256"]
            except (ValueError, KeyError, OSError):
                recorded = None
        want = sha256 or recorded
        try:
            _verify(target, want, None if want else git_blob)
        except AbawError as e:
            raise AbawError(f"{e}; the cached copy is corrupt or was replaced: delete it to download again") from None
        return target
    if not (sha256 or git_blob):
        raise AbawError(f"{url}: no pinned checksum for this file; pass sha256=<hex> to verify it")
    tmp = d / f".{name}.partial-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            try:
                FETCH(url, f)
            except OSError as e:
                raise AbawError(f"{url}: download failed ({e}); offline? put the file somewhere and pass "
                                f"file=PATH") from None
            f.flush()
            os.fsync(f.fileno())
        got, how = _verify(tmp, sha256, git_blob)
        from abaw.io import write_json

        write_json(meta_path, {"url": url, "sha256": got, "verified_by": how, "git_blob": git_blob})
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------- pickles without model code


class _Inert:
    """Stand-in for any class of a pickled model: keeps its state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()


_REAL = ("torch", "collections", "numpy", "copyreg", "_codecs")
_SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "slice", "int", "float", "bool", "str", "bytes",
                  "bytearray", "complex", "range", "object"}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol 2 names
        if module == "builtins":
            if name in _SAFE_BUILTINS:
                return super().find_class(module, name)
        elif module.split(".")[0] in _REAL and not module.startswith("torch.nn.modules"):
            return super().find_class(module, name)
        return type(name, (_Inert,), {"__module__": f"inert.{module}"})


class _InertPickle:
    Unpickler = _InertUnpickler
    __name__ = "abaw_inert_pickle"

    @staticmethod
    def load(f: BinaryIO, **kw: Any) -> Any:
        return _InertUnpickler(f, **kw).load()


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    if depth > 64:
        return
    d = getattr(obj, "__dict__", None) or {}
    skip = set(d.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for n, t in (d.get(kind) or {}).items():
            if isinstance(t, torch.Tensor) and not (kind == "_buffers" and n in skip):
                out[prefix + n] = t.detach()
    for n, m in (d.get("_modules") or {}).items():
        if m is not None:
            _collect(m, f"{prefix}{n}.", out, depth + 1)


def state_dict_from_model_pickle(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a whole pickled nn.Module (torch.save(model)), without using its classes.

    Still unpickles (torch rebuild functions run): call only for trusted files.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickle)  # noqa: S614
    except Exception as e:  # noqa: BLE001 - report any unpickling failure as a user error
        raise AbawError(f"{path}: cannot read the model pickle ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict):
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for k in ("state_dict", "model"):
            if isinstance(obj.get(k), dict):
                return {kk: v for kk, v in obj[k].items() if isinstance(v, torch.Tensor)}
    sd: dict[str, torch.Tensor] = {}
    _collect(obj, "", sd)
    if not sd:
        raise AbawError(f"{path}: no model tensors found in the pickle")
    return sd


def load_weights(path: str | os.PathLike, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, a plain torch state dict, or (trusted) a whole-model pickle."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from abaw.safeload import load_safetensors as load_file

        return load_file(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values()):
            return sd
    except Exception:  # noqa: BLE001 - not loadable safely: a whole-model pickle
        pass
    if not trust_pickle:
        raise AbawError(f"{path}: a whole pickled model; unpickling can run code from the file, so it "
                        "loads only with trust_pickle=1 (use it only if you trust where the file came from)")
    return state_dict_from_model_pickle(path)


def _match_arch(sd: dict[str, torch.Tensor], archs: tuple[str, ...], head: tuple[str, ...], where: str):
    import timm

    body = {k.removeprefix("module."): v for k, v in sd.items()}
    body = {k: v for k, v in body.items() if not k.startswith(head)}
    notes = []
    for arch in archs:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        ref = model.state_dict()
        if set(ref) == set(body) and all(ref[k].shape == body[k].shape for k in ref):
            model.load_state_dict(body, strict=True)
            return arch, model
        missing = len(set(ref) - set(body))
        extra = len(set(body) - set(ref))
        shapes = sum(1 for k in set(ref) & set(body) if ref[k].shape != body[k].shape)
        notes.append(f"{arch}: {missing} missing, {extra} unexpected, {shapes} shape mismatches")
    raise AbawError(f"{where}: weights fit none of the expected architectures ({'; '.join(notes)})")


HSEMOTION_OPTIONS = (
    TRUST_PICKLE,
    Option("sha256", "str", None, "expected SHA-256 of the weights file (needed for files not in the table)"),
    Option("url", "str", None, "download the weights from here instead of the pinned EmotiEffLib commit"),
    Option("file", "str", None, "a local copy of the weights file"),
    Option("arch", "str", None, "timm architecture, for files not in the table"),
    Option("output", "choice", "features", "pooled embedding, classifier logits, or both concatenated",
           choices=("features", "logits", "both")),
    *PREPROCESS_OPTIONS,
)


@register_backbone("hsemotion", HSEMOTION_OPTIONS)
def hsemotion_backbone(name: str, opts: dict[str, str], spec: str) -> Backbone:
    """HSEmotion AffectNet model by name (options: HSEMOTION_OPTIONS)."""
    known = MODELS.get(name)
    archs = (opts["arch"],) if "arch" in opts else (known.archs if known else ())
    if not archs:
        raise AbawError(f"{spec}: unknown HSEmotion model {name!r} (known: {', '.join(sorted(MODELS))}); "
                        "for another file give arch=<timm model>, file= or url=, and sha256=")
    sha = opts.get("sha256") or (known.sha256 if known else None)
    if "file" in opts:
        path = Path(opts["file"])
        if not path.exists():
            raise AbawError(f"{spec}: file {path} not found")
        file_sha, how = _verify(path, sha, known.git_blob if known else None)
        url = None
    else:
        url = opts.get("url") or (URL.format(commit=COMMIT, name=name) if known else None)
        if url is None:
            raise AbawError(f"{spec}: give url= or file= for a model not in the table")
        blob = known.git_blob if known and "url" not in opts else None
        path = fetch_verified(f"{name}.pt", url, sha, blob)
        file_sha, how = file_sha256(path), "cache"
    sd = load_weights(path, bool_option(opts, "trust_pickle"))
    head = known.head if known else ("classifier.", "head.fc.", "fc.", "head.")
    arch, model = _match_arch(sd, archs, head, str(path))
    output = opts.get("output", "features")
    if output != "features":
        model = WithLogits(model, _classifier(sd, head, int(model.num_features), str(path)), output)
    default = Preprocess(input_size=known.size if known else 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         interpolation="bilinear", channel_order="RGB")
    pre = preprocess_from_options(opts, default)
    source = {"family": "hsemotion", "model": name, "arch": arch, "url": url, "file": str(path),
              "file_sha256": file_sha, "verified_by": how}
    canon = _canonical(spec)
    return Backbone(spec=canon, key=spec_key(canon), model=model, dim=int(model.num_features),
                    preprocess=pre, source=source)


class WithLogits(nn.Module):
    """A headless model plus its classifier: logits, or `[features, logits]` (`output=both`)."""

    def __init__(self, body: nn.Module, classifier: nn.Linear, output: str):
        super().__init__()
        self.body = body
        self.classifier = classifier
        self.both = output == "both"
        self.num_features = classifier.out_features + (int(body.num_features) if self.both else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        logits = self.classifier(f)
        return torch.cat([f, logits], dim=-1) if self.both else logits


def _classifier(sd: dict[str, torch.Tensor], head: tuple[str, ...], dim: int, where: str) -> nn.Linear:
    """The file's linear classifier (under one of the `head` prefixes) as an nn.Linear."""
    body = {k.removeprefix("module."): v for k, v in sd.items()}
    for p in head:
        w, b = body.get(f"{p}weight"), body.get(f"{p}bias")
        if w is not None and w.ndim == 2 and w.shape[1] == dim:
            lin = nn.Linear(dim, w.shape[0], bias=b is not None)
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            return lin
    raise AbawError(f"{where}: no linear classifier ({' or '.join(p + 'weight' for p in head)} of width {dim}) "
                    "in the file, so output=logits|both is not available")


def _canonical(spec: str) -> str:
    """The spec without trust_pickle / sha256 / url / file: they say how the weights were
    obtained, not which features they give (the weights' SHA-256 is in the fingerprint)."""
    from urllib.parse import urlencode

    fam, name, opts = parse_spec(spec)
    keep = {k: v for k, v in opts.items() if k not in ("trust_pickle", "sha256", "url", "file")}
    return f"{fam}:{name}" + (f"?{urlencode(keep)}" if keep else "")


__all__ = ["MODELS", "HSModel", "fetch_verified", "git_blob_sha1", "load_weights", "state_dict_from_model_pickle",
           "cache_dir"]
