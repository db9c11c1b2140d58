"""Running a contraction program (:class:`engine.contract.program.Program`) on torch tensors."""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from engine.contract.program import Program
from engine.nn.activations import ACTIVATION_FNS
from engine.types import TensorId


def run_program(program: Program, cores: Mapping[TensorId, torch.Tensor], x: torch.Tensor | None = None,
                until_weight: bool = False,
                activations: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> torch.Tensor:
    """Run ``program``: ``cores`` maps core id -> tensor, ``x`` is ``(B, in)``.

    Returns ``y`` (``B x out``), or W (``in x out``) with ``until_weight`` (materialise programs only).
    ``activations`` replaces the activation functions by name (e.g. to record pre-activations).
    """
    if until_weight and program.schedule != "materialise":
        raise ValueError("until_weight needs a materialise program: a stream program never forms W")
    acts = activations or ACTIVATION_FNS
    # while torch.compile traces, derive the plan in the traced Python (trace time only): a first cached_property
    # access takes a lock that dynamo cannot trace (fullgraph would fail)
    plan = program.derive_plan() if torch.compiler.is_compiling() else program.plan
    env: dict[str, torch.Tensor] = {f"core:{k}": v for k, v in cores.items()}
    if x is not None:
        env["x"] = x
    if program.slicing is not None:  # the generation slice by slice, recomputed in backward (memory budgets)
        from engine.nn.sliced import run_sliced

        return run_sliced(program, env, acts, until_weight)
    for op, inputs, output, arg, activation, phase, frees in plan:
        if until_weight and phase == "apply":
            break
        run_step(env, acts, op, inputs, output, arg, activation, frees)
    return env["W"] if until_weight else env[program.steps[-1].output]


def run_step(env: dict, acts: dict, op: str, inputs: tuple, output: str, arg, activation: str | None,
             frees: tuple) -> None:
    """One step of a program's plan on ``env`` (name -> tensor): a reshape, a copy or an einsum, then its
    activation; the intermediates it was the last reader of are freed early."""
    if op == "reshape":
        val = env[inputs[0]].reshape(arg)
    elif arg is None:
        val = env[inputs[0]]
    else:
        val = torch.einsum(arg, *[env[i] for i in inputs])
    if activation is not None:
        val = acts[activation](val)
    env[output] = val
    for i in frees:
        env.pop(i, None)
