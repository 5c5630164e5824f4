"""`mtcnn:` backbones: the face networks of MTCNN as pretrained feature extractors.

facenet-pytorch ships the weights of MTCNN's refinement and output networks (RNet,
ONet) inside its PyPI package. They were trained on faces (face/non-face, box and
5-landmark regression), so their penultimate layers describe facial geometry; they
need no download, which makes them the pretrained backbone available everywhere
(tests, CI, the demo, machines without internet).

    mtcnn:onet                 256-d, 48x48 input (ONet's dense layer)
    mtcnn:onet?layer=conv4     1152-d (ONet's last conv map, flattened)
    mtcnn:onet?layer=both      1408-d (both)
    mtcnn:rnet                 128-d, 24x24 input

The weights are read with `torch.load(weights_only=True)` from the installed package and
their file SHA-256 is recorded in the fingerprint.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from abaw.errors import AbawError
from abaw.extract.backbones.base import Backbone, Preprocess
from abaw.extract.backbones.registry import Option, register_backbone, spec_key
from abaw.fingerprint import file_sha256

# MTCNN normalises pixels as (x - 127.5) / 128 on RGB [0, 255].
_MEAN = (0.5, 0.5, 0.5)
_STD = (128 / 255,) * 3
NETS = {"onet": (48, {"dense": 256, "conv4": 1152, "both": 1408}), "rnet": (24, {"dense": 128, "conv3": 576,
                                                                                 "both": 704})}


class _MTCNNFeatures(nn.Module):
    """Runs RNet/ONet up to the chosen layer(s)."""

    def __init__(self, net: nn.Module, name: str, layer: str):
        super().__init__()
        self.net = net
        self.name = name
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.pool1(n.prelu1(n.conv1(x)))
        x = n.pool2(n.prelu2(n.conv2(x)))
        if self.name == "onet":
            x = n.pool3(n.prelu3(n.conv3(x)))
            x = n.prelu4(n.conv4(x))
            flat = x.permute(0, 3, 2, 1).contiguous().flatten(1)  # the layout dense5 was trained on
            dense = n.prelu5(n.dense5(flat))
        else:
            x = n.prelu3(n.conv3(x))
            flat = x.permute(0, 3, 2, 1).contiguous().flatten(1)
            dense = n.prelu4(n.dense4(flat))
        if self.layer == "dense":
            return dense
        if self.layer == "both":
            return torch.cat([dense, flat], dim=1)
        return flat


def _weights_path(name: str) -> str:
    import facenet_pytorch

    path = os.path.join(os.path.dirname(facenet_pytorch.__file__), "data", f"{name}.pt")
    if not os.path.exists(path):
        raise AbawError(f"mtcnn:{name}: the weights file {path} is missing from the facenet-pytorch install")
    return path


MTCNN_OPTIONS = (
    Option("layer", "choice", "dense", "features: the dense layer, the last conv map (onet: conv4, rnet: conv3) "
           "or both", choices=("dense", "conv4", "conv3", "both")),
)


@register_backbone("mtcnn", MTCNN_OPTIONS, example="mtcnn:rnet")
def mtcnn_backbone(name: str, opts: dict[str, str], spec: str) -> Backbone:
    """MTCNN's RNet/ONet (facenet-pytorch's packaged weights) as a frozen extractor."""
    from facenet_pytorch.models.mtcnn import ONet, RNet

    if name not in NETS:
        raise AbawError(f"{spec}: unknown MTCNN network {name!r} (onet or rnet)")
    size, layers = NETS[name]
    layer = opts.get("layer", "dense")
    if layer not in layers:
        raise AbawError(f"{spec}: layer must be one of {', '.join(layers)}")
    path = _weights_path(name)
    net = (ONet if name == "onet" else RNet)(pretrained=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    source: dict[str, Any] = {"pretrained": True, "weights": "facenet-pytorch package data",
                              "weights_file_sha256": file_sha256(path)}
    pre = Preprocess(input_size=size, mean=_MEAN, std=_STD, interpolation="bilinear")
    return Backbone(spec=spec, key=spec_key(spec), model=_MTCNNFeatures(net, name, layer), dim=layers[layer],
                    preprocess=pre, source=source)
