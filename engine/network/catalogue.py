"""The architecture catalogue: named architectures a network file can start from, in one registry.

Each entry is registered with :func:`register_architecture` on a factory ``factory(input_shape, num_classes,
**options) -> nn.Module`` and declares its default input shape (per example), its default number of classes and its
options (name, type, default, help), so the CLI, the studio and the JSON Schema offer what the registry holds and a
network file's options are checked before anything is built. This module does not import torch at import time; the
factories import torch, torchvision and :mod:`engine.network.nets` when they run.

- ``mlp``: flatten, then ``Linear`` layers ``fc1 .. fcN`` with an activation between them.
- ``cnn1d``: three ``Conv1d`` layers and a two-layer classifier (the MNIST-1D CNN of Greydanus 2020, with a wider
  ``fc1`` so that it is worth compressing).
- ``lenet5``: LeCun et al.'s LeNet-5 (conv 6 and 16 of 5x5, FC 120 - 84 - classes; padding 2 for 28x28 inputs).
- ``vgg_cifar``: VGG-11/13/16/19 for 32x32 inputs (batch norm, a 512-wide classifier).
- ``resnet18``: torchvision's ResNet-18 (``cifar_stem``: a 3x3 stride-1 stem without max-pool for 32x32 inputs).
- ``alexnet``, ``vgg16``, ``vit_b_16``: torchvision's, exactly as torchvision defines them (no weights: architecture
  only, nothing is downloaded).
- ``transformer``: a small pre-norm Transformer encoder classifier over patches (``nn.MultiheadAttention``).

A user model comes by import path instead (``{"import": "package.module:factory"}``): ``factory(**options)``
must return the ``nn.Module``. Importing runs that module's code, so a network file (which may come from anyone) can
only name modules the user trusts: those listed, as module names or package prefixes, in the environment variable
``TNSTUDIO_TRUSTED_MODULES`` (comma-separated, e.g. ``mypkg,lab.models``); any other is refused before it is
imported, with the way to allow it.
"""
from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from engine.format import first_line, int_list

if TYPE_CHECKING:
    from torch import nn

IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
OPTION_TYPES = ("int", "ints", "bool", "str", "float")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
MAX_OPTION_INT = 2 ** 31 - 1  # widths, depths, channels: what a dim may be (engine.design.model.MAX_DIM)
# Layers an option may ask for (a depth, the length of a list of widths): building and analysing each costs time
# and memory before any cost model can refuse the whole (a transformer of depth 100,000 took 2.3 GB and minutes)
MAX_OPTION_LAYERS = 256


class CatalogueError(ValueError):
    """An unknown architecture, a bad option, or a model that cannot be built as asked."""


@dataclass(frozen=True)
class ArchOption:
    """One option of an architecture (a keyword of its factory)."""

    name: str
    type: str  # one of OPTION_TYPES
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    minimum: int | None = 1  # for int / ints
    maximum: int = MAX_OPTION_INT  # for int / ints
    below: float | None = None  # for float: values must be less than this (dropout < 1)
    max_items: int = MAX_OPTION_LAYERS  # for ints: the longest list

    def _int_ok(self, v: Any) -> bool:
        return _is_int(v) and (self.minimum is None or v >= self.minimum) and v <= self.maximum

    def check(self, value: Any) -> Any:
        """The value normalised (lists for ``ints``), or :class:`CatalogueError` naming the option."""
        bad = CatalogueError(f"option {self.name!r} must be {self.describe()}, got {value!r}")
        if self.type == "int":
            if not self._int_ok(value):
                raise bad
        elif self.type == "ints":
            if not isinstance(value, (list, tuple)) or not value or len(value) > self.max_items \
                    or not all(self._int_ok(v) for v in value):
                raise bad
            value = [int(v) for v in value]
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise bad
        elif self.type == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0 or (self.below is not None and value >= self.below):
                raise bad
            value = float(value)
        elif self.type == "str":
            if not isinstance(value, str):
                raise bad
        if self.choices and value not in self.choices:
            raise bad
        return value

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        top = "2^31 - 1" if self.maximum == MAX_OPTION_INT else str(self.maximum)
        span = f" from {self.minimum} to {top}" if self.minimum is not None else f" <= {top}"
        number = f"a number in [0, {self.below:g})" if self.below is not None else "a number >= 0"
        return {"int": f"an integer{span}", "ints": f"a list of 1 to {self.max_items} integers{span}",
                "bool": "true or false",
                "float": number, "str": "a string"}[self.type]

    def schema(self) -> dict[str, Any]:
        """This option as a JSON Schema fragment."""
        if self.choices:
            return {"enum": list(self.choices), "description": self.help}
        base: dict[str, Any] = {"int": {"type": "integer"}, "bool": {"type": "boolean"},
                                "float": {"type": "number", "minimum": 0}, "str": {"type": "string"},
                                "ints": {"type": "array", "items": {"type": "integer"}, "minItems": 1}}[self.type]
        if self.type in ("int", "ints"):
            target = base if self.type == "int" else base["items"]
            if self.minimum is not None:
                target["minimum"] = self.minimum
            target["maximum"] = self.maximum
        if self.type == "ints":
            base["maxItems"] = self.max_items
        if self.type == "float" and self.below is not None:
            base["exclusiveMaximum"] = self.below
        return {**base, "description": self.help}

    def parse_text(self, text: str) -> Any:
        """An option value from command-line text (``256,256``, ``true``, ``4``), or in JSON as ``tnstudio network
        list`` shows defaults (``[256, 256]``, ``"relu"``)."""
        text = text.strip()
        try:
            as_json = json.loads(text)
        except ValueError:
            pass
        else:
            if self.type == "ints" and _is_int(as_json):
                as_json = [as_json]
            try:
                return self.check(as_json)
            except CatalogueError:
                pass  # read as plain text below (e.g. 1 for a bool), which names the problem when there is one
        try:
            if self.type == "int":
                return self.check(int(text))
            if self.type == "ints":
                return self.check(int_list(text))
            if self.type == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            if self.type == "float":
                return self.check(float(text))
        except ValueError:
            raise CatalogueError(f"option {self.name!r} must be {self.describe()}, got {text!r}") from None
        return self.check(text)


@dataclass(frozen=True)
class Architecture:
    """A registered architecture (see the module docstring)."""

    name: str
    title: str
    description: str
    input_shape: tuple[int, ...]  # the default input shape per example (C, H, W), (C, L) or (features,)
    num_classes: int
    factory: Callable[..., "nn.Module"]
    options: tuple[ArchOption, ...] = ()
    source: str = "tnstudio"  # "torchvision": built by torchvision exactly as it defines it
    check_input: Callable[[tuple[int, ...], dict[str, Any]], None] | None = None  # raises CatalogueError

    def option(self, name: str) -> ArchOption:
        for o in self.options:
            if o.name == name:
                return o
        raise CatalogueError(f"architecture {self.name!r} has no option {name!r}"
                             + (f" (options: {', '.join(o.name for o in self.options)})" if self.options
                                else " (it takes none)"))

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options normalised, defaults filled in; unknown or bad ones raise :class:`CatalogueError`."""
        out = {o.name: o.default for o in self.options}
        for k, v in options.items():
            out[k] = self.option(k).check(v)
        return out


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(name: str, *, title: str, description: str, input_shape: Sequence[int],
                          num_classes: int, options: Sequence[ArchOption] = (), source: str = "tnstudio",
                          check_input: Callable[[tuple[int, ...], dict[str, Any]], None] | None = None
                          ) -> Callable[[Callable[..., "nn.Module"]], Callable[..., "nn.Module"]]:
    """Decorator registering ``factory(input_shape, num_classes, **options)`` as architecture ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is registered twice")

    def deco(factory: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
        _REGISTRY[name] = Architecture(name, title, description, tuple(input_shape), num_classes, factory,
                                       tuple(options), source, check_input)
        return factory

    return deco


def architectures() -> tuple[Architecture, ...]:
    return tuple(_REGISTRY.values())


def architecture_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def architecture(name: str) -> Architecture:
    """The registered architecture ``name`` (case and ``-`` folded), or :class:`CatalogueError` listing them."""
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise CatalogueError(f"unknown architecture {name!r}: choose one of {', '.join(_REGISTRY)}, or give a model "
                             f"by import path package.module:factory")
    return _REGISTRY[key]


def check_import_path(path: str) -> str:
    if not isinstance(path, str) or not IMPORT_PATH.match(path):
        raise CatalogueError(f"import path must look like package.module:factory, got {path!r}")
    return path


TRUST_ENV = "TNSTUDIO_TRUSTED_MODULES"


def trusted(module: str) -> bool:
    """Whether ``module`` is, or is inside, a module listed in ``$TNSTUDIO_TRUSTED_MODULES``."""
    import os

    allowed = [m.strip() for m in os.environ.get(TRUST_ENV, "").split(",") if m.strip()]
    return any(module == m or module.startswith(m + ".") for m in allowed)


def import_factory(path: str) -> Callable[..., "nn.Module"]:
    """The callable named by ``package.module:factory`` (imports the module: its code runs), when the module is
    trusted (:func:`trusted`); otherwise :class:`CatalogueError` saying how to trust it."""
    mod_name, _, attr = check_import_path(path).partition(":")
    if not trusted(mod_name):
        raise CatalogueError(f"architecture {path!r} would import and run module {mod_name!r}, which is not trusted: "
                             f"if you trust it, set {TRUST_ENV}={mod_name.split('.')[0]} (comma-separated module "
                             f"prefixes)")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise CatalogueError(f"cannot import {mod_name!r} for architecture {path!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CatalogueError(f"{mod_name!r} has no attribute {attr!r} (architecture {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CatalogueError(f"{path!r} is not callable: it must be a factory returning an nn.Module")
    return obj


# ----------------------------------------------------------------------------- shared checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need_dims(name: str, dims: Sequence[int]) -> Callable[[tuple[int, ...], dict[str, Any]], None]:
    def check(shape: tuple[int, ...], options: dict[str, Any]) -> None:
        if len(shape) not in dims:
            what = " or ".join({1: "(features,)", 2: "(channels, length)", 3: "(channels, height, width)"}[d]
                               for d in dims)
            raise CatalogueError(f"{name} takes inputs of shape {what}, got {list(shape)}")
    return check


def _image(name: str, channels: int | None = None, min_size: int = 1, square: bool = False, multiple: int = 1
           ) -> Callable[[tuple[int, ...], dict[str, Any]], None]:
    def check(shape: tuple[int, ...], options: dict[str, Any]) -> None:
        _need_dims(name, (3,))(shape, options)
        c, h, w = shape
        if channels is not None and c != channels:
            raise CatalogueError(f"{name} (as torchvision defines it) takes {channels}-channel images, got {c} "
                                 f"channels")
        if min(h, w) < min_size:
            raise CatalogueError(f"{name} needs images of at least {min_size}x{min_size}, got {h}x{w}")
        if square and h != w:
            raise CatalogueError(f"{name} needs square images, got {h}x{w}")
        if h % multiple or w % multiple:
            raise CatalogueError(f"{name} needs image sides divisible by {multiple}, got {h}x{w}")
    return check


# ----------------------------------------------------------------------------- the catalogue
_ACT = ArchOption("activation", "str", "relu", "activation between layers", choices=ACTIVATIONS)


@register_architecture("mlp", title="MLP", description="flatten, then fully connected layers fc1..fcN",
                       input_shape=(1, 40), num_classes=10, check_input=_need_dims("mlp", (1, 2, 3)),
                       options=(ArchOption("hidden", "ints", [256, 256], "hidden layer widths"), _ACT))
def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int], activation: str) -> "nn.Module":
    from engine.network.nets import mlp

    return mlp(math.prod(input_shape), num_classes, hidden, activation)


def _cnn1d_check(shape: tuple[int, ...], options: dict[str, Any]) -> None:
    _need_dims("cnn1d", (2,))(shape, options)
    if shape[1] < 4:
        raise CatalogueError(f"cnn1d needs signals of length >= 4, got {shape[1]}")


@register_architecture("cnn1d", title="1-D CNN (MNIST-1D)",
                       description="three Conv1d layers (stride 2, 2, 1), then fc1 -> activation -> fc2",
                       input_shape=(1, 40), num_classes=10, check_input=_cnn1d_check,
                       options=(ArchOption("channels", "int", 32, "channels of every conv layer"),
                                ArchOption("hidden", "int", 256, "width of fc1"), _ACT))
def _cnn1d(input_shape: tuple[int, ...], num_classes: int, channels: int, hidden: int, activation: str) -> "nn.Module":
    from engine.network.nets import cnn1d

    return cnn1d(input_shape, num_classes, channels, hidden, activation)


@register_architecture("lenet5", title="LeNet-5", description="conv 6@5x5 - pool - conv 16@5x5 - pool - FC 120 - 84 "
                       "- classes (padding 2 on 28x28 inputs, as for MNIST)", input_shape=(1, 28, 28),
                       num_classes=10, check_input=_image("lenet5", min_size=16),
                       options=(_ACT, ArchOption("pool", "str", "max", "pooling", choices=("max", "avg"))))
def _lenet5(input_shape: tuple[int, ...], num_classes: int, activation: str, pool: str) -> "nn.Module":
    from engine.network.nets import lenet5

    return lenet5(input_shape, num_classes, activation, pool)


@register_architecture("vgg_cifar", title="VGG (CIFAR, 32x32)",
                       description="VGG-11/13/16/19 conv stack with batch norm for 32x32 images, then FC layers",
                       input_shape=(3, 32, 32), num_classes=10, check_input=_image("vgg_cifar", min_size=32,
                                                                                   multiple=32),
                       options=(ArchOption("depth", "int", 16, "VGG depth", choices=(11, 13, 16, 19)),
                                ArchOption("fc", "ints", [512, 512], "widths of the hidden FC layers"),
                                ArchOption("batch_norm", "bool", True, "batch norm after every conv")))
def _vgg_cifar(input_shape: tuple[int, ...], num_classes: int, depth: int, fc: list[int], batch_norm: bool
               ) -> "nn.Module":
    from engine.network.nets import vgg_cifar

    return vgg_cifar(input_shape, num_classes, depth, fc, batch_norm)


@register_architecture("resnet18", title="ResNet-18", description="torchvision's ResNet-18 (cifar_stem: 3x3 stride-1 "
                       "stem, no max-pool, for 32x32 images)", input_shape=(3, 224, 224), num_classes=1000,
                       source="torchvision", check_input=_image("resnet18", min_size=8),
                       options=(ArchOption("cifar_stem", "bool", False, "3x3 stride-1 stem without max-pool"),))
def _resnet18(input_shape: tuple[int, ...], num_classes: int, cifar_stem: bool) -> "nn.Module":
    import torchvision
    from torch import nn

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if cifar_stem or input_shape[0] != 3:
        k, s, p = (3, 1, 1) if cifar_stem else (7, 2, 3)
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=k, stride=s, padding=p, bias=False)
        if cifar_stem:
            model.maxpool = nn.Identity()
    return model


@register_architecture("alexnet", title="AlexNet", description="torchvision's AlexNet (224x224 images)",
                       input_shape=(3, 224, 224), num_classes=1000, source="torchvision",
                       check_input=_image("alexnet", channels=3, min_size=63))
def _alexnet(input_shape: tuple[int, ...], num_classes: int) -> "nn.Module":
    import torchvision

    return torchvision.models.alexnet(weights=None, num_classes=num_classes)


@register_architecture("vgg16", title="VGG-16", description="torchvision's VGG-16 (224x224 images, FC 25088 - 4096 - "
                       "4096 - classes)", input_shape=(3, 224, 224), num_classes=1000, source="torchvision",
                       check_input=_image("vgg16", channels=3, min_size=32))
def _vgg16(input_shape: tuple[int, ...], num_classes: int) -> "nn.Module":
    import torchvision

    return torchvision.models.vgg16(weights=None, num_classes=num_classes)


@register_architecture("vit_b_16", title="ViT-B/16", description="torchvision's Vision Transformer B/16 (12 blocks, "
                       "768 wide, 12 heads; square images, sides divisible by 16)", input_shape=(3, 224, 224),
                       num_classes=1000, source="torchvision",
                       check_input=_image("vit_b_16", channels=3, min_size=16, square=True, multiple=16))
def _vit_b_16(input_shape: tuple[int, ...], num_classes: int) -> "nn.Module":
    import torchvision

    return torchvision.models.vit_b_16(weights=None, num_classes=num_classes, image_size=input_shape[1])


def _transformer_check(shape: tuple[int, ...], options: dict[str, Any]) -> None:
    _need_dims("transformer", (2, 3))(shape, options)
    p = options["patch"]
    if any(s % p for s in shape[1:]):
        raise CatalogueError(f"transformer: patch {p} must divide the input's sides {list(shape[1:])}")
    if options["dim"] % options["heads"]:
        raise CatalogueError(f"transformer: dim {options['dim']} must be divisible by heads {options['heads']}")


@register_architecture("transformer", title="Transformer encoder", description="patch embedding, class token, pre-norm "
                       "encoder blocks (nn.MultiheadAttention + MLP), classifier head; 1-D or 2-D inputs",
                       input_shape=(1, 40), num_classes=10, check_input=_transformer_check,
                       options=(ArchOption("dim", "int", 64, "embedding width"),
                                ArchOption("depth", "int", 2, "encoder blocks", maximum=MAX_OPTION_LAYERS),
                                ArchOption("heads", "int", 4, "attention heads"),
                                ArchOption("mlp_dim", "int", 128, "hidden width of each block's MLP"),
                                ArchOption("patch", "int", 4, "patch size (length, or side of a square patch)"),
                                ArchOption("dropout", "float", 0.0, "dropout", below=1.0)))
def _transformer(input_shape: tuple[int, ...], num_classes: int, dim: int, depth: int, heads: int, mlp_dim: int,
                 patch: int, dropout: float) -> "nn.Module":
    from engine.network.nets import TransformerClassifier

    return TransformerClassifier(input_shape, num_classes, dim, depth, heads, mlp_dim, patch, dropout)


# ----------------------------------------------------------------------------- building
@dataclass(frozen=True)
class ArchRef:
    """What a network file names: a catalogue architecture or an import path, with options."""

    name: str | None = None
    import_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name} if self.name else {"import": self.import_path}
        if self.options:
            d["options"] = dict(self.options)
        return d

    @property
    def label(self) -> str:
        return self.name or str(self.import_path)


def build_architecture(ref: ArchRef, input_shape: Sequence[int], num_classes: int) -> "nn.Module":
    """The dense model a reference names (on torch's current default device; use ``with torch.device("meta")``
    to build shapes only)."""
    from torch import nn

    if ref.import_path:
        factory = import_factory(ref.import_path)
        try:
            model = factory(**ref.options)
        except Exception as e:  # noqa: BLE001 - the user's own code: whatever it raises is a refusal in one line
            raise CatalogueError(f"{ref.import_path}({', '.join(f'{k}={v!r}' for k, v in ref.options.items())}) "
                                 f"raised {type(e).__name__}: {first_line(e)}") from None
    else:
        arch = architecture(ref.name or "")
        opts = arch.check_options(ref.options)
        if arch.check_input:
            arch.check_input(tuple(input_shape), opts)
        try:
            model = arch.factory(tuple(input_shape), num_classes, **opts)
        except (RuntimeError, ValueError, OverflowError) as e:  # torch refusing a layer's shape, e.g. a weight of
            # more entries than it can count (an input of 99999999 x 99999999 flattened into an MLP)
            raise CatalogueError(f"architecture {ref.label!r} cannot be built for input {list(input_shape)} and "
                                 f"{num_classes} classes with options {opts}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise CatalogueError(f"architecture {ref.label!r} built a {type(model).__name__}, not a torch nn.Module")
    return model
