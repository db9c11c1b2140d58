"""``TNLinear``: a tensor-network layer as a ``torch.nn.Module``.

The parameters are the design's cores, in an ``nn.ParameterDict`` named ``cores`` (state_dict keys
``cores.<key>``); copy (``delta``) tensors are fixed buffers ``delta_<key>``. ``key`` is the tensor id itself when
it is a plain identifier (``G0``, ``N1_0``, ``top``, ``D0_0``, ...); any other id (one with a dot, a clash with a
``ParameterDict`` attribute, or one starting with ``x_``) is stored as ``x_`` + the hex of its UTF-8 bytes, which
:func:`key_to_id` turns back. Every forward pass runs a :class:`~engine.contract.program.Program` (the single
source of truth shared with the cost model and the exporter), compiled once per (batch size, schedule) and cached,
with :func:`~engine.nn.execute.run_program`.

Conventions follow the project: ``weight()`` is ``W`` of shape ``(in_features, out_features)`` and the layer
computes ``y = x @ W + b`` (``nn.Linear.weight`` is ``W.T``).
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn

from engine.contract.cache import CACHE
from engine.contract.program import Program, compile_program
from engine.contract.schedule import check_schedule
from engine.contract.slicing import budget_program, parse_bytes
from engine.design.model import Design, load_design
from engine.nn.execute import run_program
from engine.nn.init import delta_tensor, init_bias, init_cores
from engine.types import PathLike, ScheduleChoice, Search

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = set(dir(nn.ParameterDict())) | {"cores", "bias"}


def id_to_key(tid: str, reserved: set[str] | frozenset[str] = frozenset(_RESERVED)) -> str:
    """A ``ParameterDict`` key for tensor id ``tid`` (reversible, see the module docstring)."""
    if _IDENT.match(tid) and tid not in reserved and not tid.startswith("x_"):
        return tid
    return "x_" + tid.encode().hex()


def key_to_id(key: str) -> str:
    """The tensor id behind a ``cores`` key (inverse of :func:`id_to_key`)."""
    return bytes.fromhex(key[2:]).decode() if key.startswith("x_") else key


def _outside_graphs(fn):
    """``fn`` excluded from ``torch.compile`` graphs. Only called while compiling, so dynamo is loaded already:
    decorating at import time would load it (about 2 s) in every process that never compiles."""
    return torch.compiler.disable(fn)


def as_design(design: Design | dict | PathLike) -> Design:
    """Accept a :class:`Design`, its dict / JSON text, or a path to a design file; always validated."""
    if isinstance(design, Design):
        return design.check()
    if isinstance(design, dict):
        return Design.from_dict(design)
    if isinstance(design, str) and design.lstrip().startswith("{"):
        return Design.from_json(design)
    if isinstance(design, (str, os.PathLike)):
        return load_design(design)
    raise TypeError(f"expected a Design, a design dict/JSON or a path, got {type(design).__name__}")


def add_cores_and_bias(module: nn.Module, design: Design, values: dict[str, torch.Tensor] | None, bias: bool,
                       fan_in: int, out_features: int, bias_seed: int, init: bool,
                       device: torch.device | str | None, dtype: torch.dtype) -> None:
    """Give ``module`` the design's cores as ``cores.<key>`` parameters (``values``, or zeros), its delta tensors as
    ``delta_<key>`` buffers (``module._delta_keys``: tensor id -> buffer name) and a bias of ``out_features`` (drawn
    for ``fan_in`` when ``init``, else zeros; ``bias=None`` without one): TNLinear's and TNConv2d's layout."""
    module.cores = nn.ParameterDict()
    module._delta_keys = {}
    for t in design.tensors:
        shape = design.shape(t.id)
        if t.kind == "delta":
            name = "delta_" + id_to_key(t.id, reserved=frozenset())
            module.register_buffer(name, delta_tensor(shape).to(device=device, dtype=dtype))
            module._delta_keys[t.id] = name
        else:
            v = values[t.id] if values is not None else torch.zeros(shape)
            module.cores[id_to_key(t.id)] = nn.Parameter(v.to(device=device, dtype=dtype))
    if bias:
        b = init_bias(out_features, fan_in, bias_seed) if init else torch.zeros(out_features)
        module.bias = nn.Parameter(b.to(device=device, dtype=dtype))
    else:
        module.register_parameter("bias", None)


class TNCores(nn.Module):
    """What TNLinear and TNConv2d share: the design's cores as parameters (delta tensors as buffers), a bias, and
    the views of them the design and the program take (set up by :func:`add_cores_and_bias`)."""

    design: Design
    cores: nn.ParameterDict
    _delta_keys: dict[str, str]

    @property
    def params(self) -> int:
        """Trainable entries of the cores (bias excluded), as the design counts them."""
        return self.design.params

    def core_tensors(self) -> dict[str, torch.Tensor]:
        """Tensor id -> tensor (trainable cores and fixed delta buffers), as the programs take them."""
        out = {key_to_id(k): v for k, v in self.cores.items()}
        for tid, name in self._delta_keys.items():
            out[tid] = getattr(self, name)
        return out


class TNLinear(TNCores):
    """A linear layer whose weight is generated by a tensor-network design.

    Args:
        design: the design (or its dict / JSON / file path).
        bias: add a learnable bias (initialised like ``nn.Linear``'s).
        schedule: ``"auto"`` (the cost model picks the cheaper schedule for each batch size), ``"materialise"``
            or ``"stream"`` (linear designs only). May be changed later through the attribute.
        search: contraction-path search effort passed to :func:`~engine.contract.program.compile_program`.
        seed: seed of the initialisation (``None``: drawn from torch's global generator).
        init: initialise the cores (:func:`engine.nn.init.init_cores`); ``False`` leaves them zero.
        memory_budget: bytes (or text such as ``"2GiB"``) a training step of this layer may take, as the cost model
            counts it: the program is then :func:`engine.contract.slicing.budget_program`'s, which slices the
            generation when nothing else fits (``None``: no budget).
    """

    def __init__(self, design: Design | dict | PathLike, bias: bool = True, schedule: ScheduleChoice = "auto",
                 search: Search = "fast", seed: int | None = None, init: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 memory_budget: int | str | None = None):
        super().__init__()
        self.design = as_design(design)
        self.in_features = self.design.in_features
        self.out_features = self.design.out_features
        self.schedule = schedule
        self.search = search
        self.memory_budget = None if memory_budget is None else parse_bytes(memory_budget)
        self._programs: dict[tuple, Program] = {}  # (batch, schedule[, itemsize under a memory budget]) -> program
        self._thorough_seen = CACHE.thorough_stored
        dtype = dtype or torch.get_default_dtype()
        if seed is None:
            seed = int(torch.randint(0, 1 << 62, (1,)).item())
        values = init_cores(self.design, seed=seed, memory_budget=self.memory_budget) if init else None
        add_cores_and_bias(self, self.design, values, bias, self.in_features, self.out_features, seed + 1, init,
                           device, dtype)

    # ----------------------------------------------------------------- configuration
    @property
    def schedule(self) -> ScheduleChoice:
        return self._schedule

    @schedule.setter
    def schedule(self, value: ScheduleChoice) -> None:
        self._schedule = check_schedule(self.design, value)

    def _itemsize(self) -> int:
        """Bytes per entry of the cores now (a budget's slicing depends on it: ``.double()`` doubles the bytes)."""
        return next((p.element_size() for p in self.cores.values()), 4)

    def _key(self, batch: int, schedule: ScheduleChoice) -> tuple:
        return (batch, schedule, self._itemsize()) if self.memory_budget is not None else (batch, schedule)

    def _compile(self, batch: int, schedule: ScheduleChoice) -> Program:
        if self.memory_budget is not None:
            prog = budget_program(self.design, batch, schedule, self.search, memory_budget=self.memory_budget,
                                  itemsize=self._itemsize())
        else:
            prog = compile_program(self.design, batch, schedule, self.search)
        self._programs[self._key(batch, schedule)] = prog
        return prog

    def program(self, batch: int, schedule: ScheduleChoice | None = None) -> Program:
        """The program this module runs for ``batch`` rows (cached per batch size and schedule; asked again once a
        thorough refinement stored a program in this process, so the module never runs worse than the cost
        report shows)."""
        schedule = schedule or self._schedule
        if CACHE.thorough_stored != self._thorough_seen:
            self._programs.clear()
            self._thorough_seen = CACHE.thorough_stored
        prog = self._programs.get(self._key(batch, schedule))
        if prog is not None:
            return prog
        if torch.compiler.is_compiling():  # plan (pure-Python path search) outside the traced graph
            return _outside_graphs(self._compile)(batch, schedule)
        return self._compile(batch, schedule)

    # ----------------------------------------------------------------- computation
    def weight(self) -> torch.Tensor:
        """W, ``(in_features, out_features)``, generated from the cores (differentiable)."""
        return run_program(self.program(1, "materialise"), self.core_tensors(), until_weight=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"TNLinear expects inputs with last dimension {self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        prog = self.program(max(int(x2.shape[0]), 1))
        y = run_program(prog, self.core_tensors(), x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        d = self.design
        return (f"{d.name!r}, in_features={self.in_features}, out_features={self.out_features}, "
                f"params={d.params:,} ({d.compression:.1f}x compression), schedule={self._schedule!r}, "
                f"bias={self.bias is not None}")

    # ----------------------------------------------------------------- from a dense layer
    @classmethod
    def from_linear(cls, linear: nn.Linear, design: Design | dict | PathLike, method: str = "auto",
                    steps: int = 300, lr: float = 0.02, seed: int = 0, **kwargs: Any) -> "TNLinear":
        """A TNLinear approximating ``linear`` (its weight and bias); the fit is in ``.fit_report``.

        ``method``: ``"tt-svd"`` (MPO / tensor-train designs: truncated TT-SVD at the design's bond dims),
        ``"cp"`` (CP designs, one open leg per factor: tensorly's ``parafac``), ``"fit"`` (any design: Adam on the
        relative Frobenius error for ``steps`` steps, scale-free) or ``"auto"`` (TT-SVD for a chain, cp for a CP
        design, else fit). ``fit_report`` holds method, relative_error, steps, seconds.
        """
        from engine.nn.tensorize import approximate

        design = as_design(design)
        if (design.in_features, design.out_features) != (linear.in_features, linear.out_features):
            raise ValueError(f"design {design.name!r} is {design.in_features}x{design.out_features} but the linear "
                             f"layer is {linear.in_features}x{linear.out_features}")
        w = linear.weight
        kwargs.setdefault("bias", linear.bias is not None)
        mod = cls(design, seed=seed, device=w.device, dtype=w.dtype, **kwargs)
        mod.fit_report = approximate(mod, w.detach().T, method=method, steps=steps, lr=lr, seed=seed)
        if mod.bias is not None and linear.bias is not None:
            with torch.no_grad():
                mod.bias.copy_(linear.bias)
        return mod

    @property
    def relative_error(self) -> float | None:
        """Relative Frobenius error of the last :meth:`from_linear` approximation (``None`` if never fitted)."""
        rep = getattr(self, "fit_report", None)
        return None if rep is None else rep["relative_error"]


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of any module (bias included)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


