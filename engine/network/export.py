"""Export a whole network as one torch-only Python file (and its state dict).

The file holds the architecture with every TN layer inlined: one class per TN layer (``TNLinear`` and ``TNConv2d``),
printed by the layer exporter (:func:`engine.nn.export.to_torch_source`: the contraction program's einsums, or a
conv design's programs), the
:class:`~engine.network.attention.TNMultiheadAttention` class when attention projections are TN layers, and a
``Network`` module whose ``__init__`` registers every module under its original name (so state-dict keys equal the
built model's) and whose ``forward`` is the model's forward as ``torch.fx`` traces it (the code fx generates,
calling the submodules). Standard ``torch.nn`` modules are rebuilt from their constructor arguments (read off the
module and checked: the rebuilt module must have the same repr and state-dict shapes, else the export is refused
naming the module). It imports only torch.

Safety, as in the layer export: every string that comes from a file (network name, design names, layer names) is
written through ``repr()`` or reduced to ``[A-Za-z0-9_ -]``; class and attribute names are generated and
validated identifiers; the forward body is fx's code generation from the traced graph. A model fx cannot trace
(data-dependent Python control flow) is refused with fx's reason.
"""
from __future__ import annotations

import inspect
import keyword
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from engine.files import atomic_write, atomic_write_text
from engine.network.format import NetworkSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_PART = re.compile(r"[A-Za-z0-9_]+")  # a module path part, fullmatched ("$" lets a final newline in); "0" too
_ALLOWED_GLOBALS = {"torch": "import torch", "device": "from torch import device", "inf": "inf = float('inf')",
                    "nan": "nan = float('nan')", "NoneType": "NoneType = type(None)", "getattr": "", "operator":
                    "import operator", "math": "import math"}
_LITERAL = (int, float, bool, str, type(None))


class ExportError(ValueError):
    """A network that cannot be exported as a torch-only file (the message says which module and why)."""


def _safe_text(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_ .,=-]+", "_", str(text))[:120]


def _is_literal(v: Any) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_is_literal(x) for x in v)
    return isinstance(v, _LITERAL)


# ----------------------------------------------------------------------------- torch.nn modules
def _special_args(m: "nn.Module") -> dict[str, Any]:
    from torch import nn

    if isinstance(m, nn.MultiheadAttention):
        return {"bias": m.in_proj_bias is not None, "add_bias_kv": m.bias_k is not None}
    return {}


def nn_ctor(m: "nn.Module") -> str:
    """``nn.Conv2d(3, 64, kernel_size=(3, 3), ...)``: a torch.nn module's constructor call from its attributes,
    checked by rebuilding it (:class:`ExportError` when that does not give the same module)."""
    import torch
    from torch import nn

    cls = type(m)
    if getattr(nn, cls.__name__, None) is not cls:
        raise ExportError(f"module of type {cls.__module__}.{cls.__name__} is not a torch.nn module: the torch-only "
                          f"export cannot rebuild it")
    special = _special_args(m)
    args = []
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if pname in special:
            value = special[pname]
        elif pname == "bias" and (getattr(m, "bias", None) is None or isinstance(m.bias, torch.Tensor)):
            value = m.bias is not None
        elif hasattr(m, pname):
            value = getattr(m, pname)
        elif p.default is not p.empty:
            continue
        else:
            raise ExportError(f"cannot read argument {pname!r} of {cls.__name__} off the module")
        if isinstance(value, torch.Tensor) or not _is_literal(value):
            raise ExportError(f"argument {pname!r} of {cls.__name__} is not a plain value ({type(value).__name__})")
        if p.default is not p.empty and _is_literal(p.default) and value == p.default \
                and type(value) is type(p.default):
            continue
        args.append(f"{pname}={value!r}")
    expr = f"nn.{cls.__name__}({', '.join(args)})"
    with torch.device("meta"):
        rebuilt = eval(expr, {"nn": nn, "torch": torch})  # noqa: S307 - built above from repr() of plain values
    if repr(rebuilt) != repr(m) or _shapes(rebuilt) != _shapes(m):
        raise ExportError(f"cannot rebuild {cls.__name__} from its attributes ({expr} gives {rebuilt!r}, the model "
                          f"has {m!r})")
    return expr


def _shapes(m: "nn.Module") -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


# ----------------------------------------------------------------------------- TN layers
def layer_class_source(design: Any, cls: str, batch: int = 64) -> str:
    """One TN layer's class as the layer exporter prints it (:func:`engine.nn.export.to_torch_source`), its whole
    file (constants, helpers, class) wrapped in a function that returns the class, so that the module-level names
    of several layers' files cannot clash: ``def _tn_<cls>(): ... return <cls>`` then ``<cls> = _tn_<cls>()``."""
    from engine.nn.export import to_torch_source

    d = design.copy()
    d.name = _safe_text(d.name)
    text = to_torch_source(d, batch=batch, class_name_=cls)
    if f"class {cls}(" not in text:
        raise ExportError(f"the layer exporter did not define class {cls} for design {d.name!r}")
    lines = [ln for ln in text.splitlines() if ln.strip() != "from __future__ import annotations"]
    body = textwrap.indent("\n".join(lines).strip("\n"), "    ")
    return f"def _tn_{cls}():\n{body}\n    return {cls}\n\n\n{cls} = _tn_{cls}()\n"


def _attention_source() -> str:
    from engine.network import attention

    return inspect.getsource(attention.TNMultiheadAttention).rstrip() + "\n"


# ----------------------------------------------------------------------------- tracing
def _tracer():
    import torch.fx as fx

    from engine.network.attention import TNMultiheadAttention
    from engine.nn.conv import TNConv2d
    from engine.nn.linear import TNLinear

    tn_modules = (TNLinear, TNConv2d, TNMultiheadAttention)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname: str) -> bool:
            if isinstance(m, tn_modules):
                return True
            if any(isinstance(c, tn_modules) for c in m.modules()):
                return False  # trace through a torch.nn container that holds TN layers
            return super().is_leaf_module(m, qualname)

    return Tracer()


def network_source(model: "nn.Module", spec: NetworkSpec, source: str = "") -> str:
    """Source text of a torch-only module file computing ``model`` (built from ``spec``; see the module
    docstring). ``source`` says where weights came from (a run), for the header."""
    import torch
    from torch import nn

    from engine.network.attention import TNMultiheadAttention
    from engine.nn.conv import TNConv2d
    from engine.nn.linear import TNLinear

    try:
        graph = _tracer().trace(model)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError on proxies, ...): one clear refusal
        raise ExportError(f"torch.fx cannot trace {spec.architecture.label} ({type(e).__name__}: {e}); the "
                          f"torch-only export needs a model without data-dependent Python control flow") from None
    for node in graph.nodes:  # fx writes these names into the forward's code: only plain names may get there
        if node.op in ("call_module", "get_attr"):
            odd = [part for part in str(node.target).split(".")
                   if not _NAME_PART.fullmatch(part) or keyword.iskeyword(part)]
            if odd:
                raise ExportError(f"cannot export {node.target!r}: the torch-only file names each module, parameter "
                                  f"and buffer in its code, so every part of a name must be letters, digits and _ "
                                  f"and no Python keyword (not {odd[0]!r}); rename it in the model")
    code = graph.python_code(root_module="self")
    prologue = []
    for name, obj in code.globals.items():
        if not re.search(rf"\b{re.escape(name)}\b", code.src):
            continue  # fx lists some names (pytree helpers) whether the code uses them or not
        if isinstance(obj, str) and _IDENT.match(name) and re.fullmatch(r"torch(\.[A-Za-z_]\w*)+", obj):
            prologue.append(f"{name} = {obj}")  # a type named in an annotation, e.g. _torch_Tensor_
            continue
        if name not in _ALLOWED_GLOBALS:
            raise ExportError(f"the traced forward uses {name!r} ({obj!r}), which a torch-only file cannot import")
        if _ALLOWED_GLOBALS[name]:
            prologue.append(_ALLOWED_GLOBALS[name])
    classes: list[str] = []
    tn_count = 0
    attention_needed = False

    def ctor(m: nn.Module, path: str) -> str:
        nonlocal tn_count, attention_needed
        if isinstance(m, (TNLinear, TNConv2d)):  # a conv2d design's class comes from the conv exporter
            tn_count += 1
            cls = f"TN{tn_count}_" + re.sub(r"\W", "_", path)[:40]
            if not _IDENT.match(cls) or keyword.iskeyword(cls):
                raise ExportError(f"cannot name a class for layer {path!r}")
            classes.append(layer_class_source(m.design, cls))
            return f"{cls}(bias={m.bias is not None})"
        if isinstance(m, TNMultiheadAttention):
            attention_needed = True
            projs = ", ".join(ctor(getattr(m, p), f"{path}.{p}") for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
            return (f"TNMultiheadAttention({m.embed_dim}, {m.num_heads}, {projs}, dropout={m.dropout!r}, "
                    f"batch_first={m.batch_first!r})")
        return nn_ctor(m)

    inits = []
    seen: set[str] = set()
    for node in graph.nodes:
        if node.target in seen:
            continue
        if node.op == "call_module":
            seen.add(node.target)
            inits.append(f"_put(self, {node.target!r}, {ctor(model.get_submodule(node.target), node.target)})")
        elif node.op == "get_attr":
            seen.add(node.target)
            value = _get(model, node.target)
            if isinstance(value, nn.Parameter):
                inits.append(f"_param(self, {node.target!r}, {tuple(value.shape)!r}, "
                             f"requires_grad={value.requires_grad!r})")
            elif isinstance(value, torch.Tensor):
                inits.append(f"_buffer(self, {node.target!r}, {tuple(value.shape)!r}, {str(value.dtype)!r})")
            else:
                raise ExportError(f"the traced forward reads {node.target!r}, a {type(value).__name__} (only "
                                  f"modules, parameters and buffers can be exported)")
    forward = textwrap.indent(code.src.strip("\n"), "    ")
    info = {"name": spec.name, "architecture": spec.architecture.label, "input_shape": list(spec.resolved_input_shape),
            "num_classes": spec.resolved_num_classes, "tn_layers": tn_count, "fingerprint": spec.fingerprint(),
            "source": source}
    parts = [
        '"""A whole network exported by TN Studio (`tnstudio export NETWORK.json --to torch`); depends on torch only.\n\n'
        "Network() builds the architecture with every TN layer inlined (one class per TN layer: the einsum steps of\n"
        "its contraction program); module names and state-dict keys equal those of the model TN Studio built, so\n"
        "Network().load_state_dict(torch.load(<weights>.pt, weights_only=True)) loads its weights. forward() is the\n"
        'model\'s forward as torch.fx traced it.\n"""\n',
        "from __future__ import annotations\n\nimport math\nfrom typing import Optional\n\nimport torch\n"
        "import torch.nn as nn\nimport torch.nn.functional as F\n",
        "\n".join(dict.fromkeys(p for p in prologue if p not in ("import torch", "import math"))) + "\n",
        f"NETWORK_INFO = {info!r}\n\n\n",
        textwrap.dedent('''\
            def _parent(root: nn.Module, path: str, create: bool = True) -> tuple[nn.Module, str]:
                *parents, leaf = path.split(".")
                for p in parents:
                    if p not in root._modules:
                        root.add_module(p, nn.Module())
                    root = root._modules[p]
                return root, leaf


            def _put(root: nn.Module, path: str, module: nn.Module) -> None:
                parent, leaf = _parent(root, path)
                parent.add_module(leaf, module)


            def _param(root: nn.Module, path: str, shape: tuple, requires_grad: bool = True) -> None:
                parent, leaf = _parent(root, path)
                parent.register_parameter(leaf, nn.Parameter(torch.zeros(shape), requires_grad=requires_grad))


            def _buffer(root: nn.Module, path: str, shape: tuple, dtype: str) -> None:
                parent, leaf = _parent(root, path)
                parent.register_buffer(leaf, torch.zeros(shape, dtype=getattr(torch, dtype.replace("torch.", ""))))
            '''),
    ]
    for c in classes:
        parts.append("\n\n" + c)
    if attention_needed:
        parts.append("\n\n" + _attention_source())
    shape = tuple(spec.resolved_input_shape)
    parts.append("\n\nclass Network(nn.Module):\n"
                 f'    """{_safe_text(spec.name)}: input (batch, {", ".join(map(str, shape))}), {tn_count} TN '
                 f'layers."""\n\n'
                 f"    INPUT_SHAPE = {shape!r}\n\n"
                 "    def __init__(self) -> None:\n        super().__init__()\n"
                 + "".join(f"        {line}\n" for line in inits) + "\n" + forward + "\n")
    text = "".join(parts)
    try:
        compile(text, "<exported network>", "exec")  # refuse to write a file Python cannot parse
    except SyntaxError as e:
        raise ExportError(f"the exported code of {spec.architecture.label} does not parse (line {e.lineno}: "
                          f"{e.msg}); nothing was written") from None
    return text


def _get(model: "nn.Module", target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def exported_state_dict(model: "nn.Module", state: Mapping[str, "torch.Tensor"] | None = None,
                        keys: list[str] | None = None) -> dict[str, "torch.Tensor"]:
    """``state`` (default: the model's) restricted to the keys the exported module has (modules the forward never
    uses are not exported)."""
    state = state if state is not None else model.state_dict()
    wanted = keys if keys is not None else list(state)
    return {k: state[k].detach().cpu().clone() for k in wanted if k in state}


def export_network(spec: NetworkSpec, output: str | Path, state_dict: Mapping[str, "torch.Tensor"] | None = None,
                   source: str = "") -> list[Path]:
    """Write ``spec`` as a torch-only module file ``output`` and, with ``state_dict`` (the built model's, e.g. a
    run's checkpoint), the weights ``<stem>.pt`` beside it. Returns the paths written."""
    import torch

    from engine.network.build import build_network

    with torch.device("meta"):
        model = build_network(spec, init=False)
    text = network_source(model, spec, source)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out]
    if state_dict is not None:
        namespace: dict[str, Any] = {"__name__": "tnstudio_exported_network"}
        exec(compile(text, str(out), "exec"), namespace)  # noqa: S102 - the text generated above
        with torch.device("meta"):
            keys = list(namespace["Network"]().state_dict())
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ExportError(f"the weights lack {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: they "
                              f"are not this network's state dict")
        wpath = out.with_name(out.stem + ".pt")
        exported = exported_state_dict(model, state_dict, keys)
        atomic_write(wpath, lambda f: torch.save(exported, f))
        written.append(wpath)
    atomic_write_text(out, text)
    return written
