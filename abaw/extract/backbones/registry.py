"""The backbone registry: specs, declared options, cache keys and `create_backbone`.

A backbone spec is `family:name` plus optional `?key=value&...` options, e.g.

    timm:vit_base_patch16_224.mae                      pretrained hub weights (online)
    timm:test_efficientnet_gn?size=112&pretrained=0     random init, native 112 px crops
    timm:resnet50?weights=/path/finetuned.safetensors   local weights
    timm:vit_base_patch16_224?norm=face                 the ABAW7 winner's face mean/std

Families register with `@register_backbone("family", options=(...))`, declaring their
options as data (`Option`: name, type, default, one-line help), as timm's default cfgs
do. `parse_spec` checks every option of a registered family against that declaration,
so a typo (`sizee=64`) or a bad value (`size=abc`) is an error naming the known options
before any model is built, any hub is asked or any store is created.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl

import torch

from abaw.errors import AbawError
from abaw.extract.backbones.base import NORMS, Backbone, Preprocess
from abaw.registry import Registry

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def parse_bool(value: str, name: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off` (any case); else an AbawError naming the option."""
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise AbawError(f"option {name}={value!r}: expected 0/1")


def parse_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise AbawError(f"option {name}={value!r}: expected an integer") from None


@dataclass(frozen=True)
class Option:
    """One declared option of a backbone family."""

    name: str
    type: str  # "str" | "int" | "bool" | "choice"
    default: Any = None  # None: decided by the family (e.g. the model's native size)
    help: str = ""
    choices: tuple[str, ...] = ()

    def parse(self, value: str) -> Any:
        """The typed value of `name=value`; an AbawError naming the option when it does not fit."""
        if self.type == "int":
            return parse_int(value, self.name)
        if self.type == "bool":
            return parse_bool(value, self.name)
        if self.type == "choice" and value not in self.choices:
            raise AbawError(f"option {self.name}={value!r}: expected one of {', '.join(self.choices)}")
        return value

    def describe(self) -> str:
        kind = "|".join(self.choices) if self.type == "choice" else self.type.upper()
        default = "" if self.default is None else f" (default {self.default})"
        return f"{self.name}={kind}{default}: {self.help}"


# options shared by several families
KEY = Option("key", "str", None, "name of the feature array in the cache (default: derived from the spec)")
TRUST_PICKLE = Option("trust_pickle", "bool", False, "allow unpickling the weights file (only for trusted files)")
PREPROCESS_OPTIONS = (
    Option("size", "int", None, "input side in pixels (default: the model's)"),
    Option("norm", "choice", None, "pixel mean/std (default: the model's)", choices=tuple(NORMS)),
    Option("interp", "choice", None, "resize interpolation (default: the model's)", choices=("bilinear", "bicubic")),
    Option("channels", "choice", None, "channel order (default RGB)", choices=("RGB", "BGR")),
)

BackboneFactory = Callable[..., Backbone]


@dataclass(frozen=True)
class BackboneFamily:
    """A registered family: its factory and its declared options (`key=` is always one)."""

    name: str
    factory: BackboneFactory  # fn(name, options: dict[str, str], spec) -> Backbone
    options: tuple[Option, ...] | None  # None: the family declared none (not checked)
    example: str | None = None  # a spec that builds offline in a second (contract tests)
    note: str = ""  # added to the unknown-option error (e.g. why there are so few)

    def option_names(self) -> list[str]:
        return sorted(o.name for o in self.options or ())

    def check(self, opts: dict[str, str], spec: str) -> dict[str, Any]:
        """Typed values of `opts`; unknown options and bad values are AbawErrors."""
        if self.options is None:
            return dict(opts)
        known = {o.name: o for o in self.options}
        unknown = sorted(set(opts) - set(known))
        if unknown:
            note = f" ({self.note})" if self.note else ""
            raise AbawError(f"{spec}: unknown options {unknown} for {self.name}: backbones{note}; "
                            f"known: {', '.join(sorted(known))}")
        try:
            return {k: known[k].parse(v) for k, v in opts.items()}
        except AbawError as e:
            raise AbawError(f"{spec}: {e}") from None

    def describe(self) -> str:
        return "\n".join(f"{self.name}: {o.describe()}" for o in self.options or ())


BACKBONES: Registry[BackboneFamily] = Registry("backbone family")


def register_backbone(family: str, options: Sequence[Option] | None = None, example: str | None = None,
                      note: str = "") -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory `fn(name, options: dict[str, str], spec: str) -> Backbone`.

    `options`: the family's declared options (`key=` is added); `parse_spec` rejects others.
    `example`: a spec that builds offline and fast, for the contract tests; `note`: a hint
    added to the unknown-option error.
    """
    declared = None if options is None else (KEY, *[o for o in options if o.name != "key"])

    def deco(fn: BackboneFactory) -> BackboneFactory:
        BACKBONES.register(family)(BackboneFamily(family, fn, declared, example, note))
        return fn

    return deco


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """`family:name?k=v&k2=v2` -> (family, name, options); options of a registered family are
    checked against its declaration."""
    if ":" not in spec:
        raise AbawError(f"backbone spec {spec!r}: expected family:name, e.g. timm:resnet50")
    family, rest = spec.split(":", 1)
    name, _, query = rest.partition("?")
    if not name:
        raise AbawError(f"backbone spec {spec!r}: empty name")
    try:
        opts = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise AbawError(f"backbone spec {spec!r}: options must be key=value&key2=value2") from None
    if family in BACKBONES:
        BACKBONES.get(family).check(opts, spec)
    return family, name, opts


def validate_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """`parse_spec`, and the family must be registered: everything checkable without building."""
    family, name, opts = parse_spec(spec)
    BACKBONES.get(family)
    return family, name, opts


def spec_key(spec: str) -> str:
    """A cache-safe array name for a spec (`key=` option overrides)."""
    _, _, opts = parse_spec(spec)
    if "key" in opts:
        key = opts["key"]
    else:
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.replace("?", "_").replace("&", "_")).strip("_")
    if not key or key.startswith("__") or key in (".", ".."):
        raise AbawError(f"backbone spec {spec!r}: unusable cache key {key!r}")
    return key


def create_backbone(spec: str, device: str | torch.device = "cpu") -> Backbone:
    """Build a frozen backbone from its spec and move it to `device`."""
    family, name, opts = validate_spec(spec)
    bb = BACKBONES.get(family).factory(name, opts, spec)
    bb.model.to(device)
    return bb


def bool_option(opts: dict[str, str], name: str, default: bool = False) -> bool:
    """A 0/1 option of a spec (`default` when absent)."""
    v = opts.get(name)
    return default if v is None else parse_bool(v, name)


_PRE = {o.name: o for o in PREPROCESS_OPTIONS}
_PRE_FIELDS = {"size": "input_size", "norm": "mean", "interp": "interpolation", "channels": "channel_order"}


def preprocess_from_options(opts: dict[str, str], default: Preprocess) -> Preprocess:
    """Apply `size=`, `norm=` (imagenet|face|half), `interp=`, `channels=` options."""
    kw: dict[str, Any] = {}
    for name, opt in _PRE.items():
        if name in opts:
            kw[_PRE_FIELDS[name]] = opt.parse(opts[name])
    if "mean" in kw:
        kw["mean"], kw["std"] = NORMS[kw["mean"]]
    return Preprocess(**{**asdict(default), **kw})
