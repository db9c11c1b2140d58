"""Layer 2, contraction: programs of einsum steps compiled from designs, path search, and the cost and memory
model read off those programs. Depends on :mod:`engine.design` only (and never imports torch).

- :mod:`~engine.contract.program`: :class:`Program`, its steps and :func:`compile_program`;
- :mod:`~engine.contract.schedule`: the schedules and which designs may stream;
- :mod:`~engine.contract.flops`: the FLOP rule of a step, forward and backward;
- :mod:`~engine.contract.paths`: contraction-path search;
- :mod:`~engine.contract.cache`: the compiled-program and remembered-path caches;
- :mod:`~engine.contract.memory`: bytes, by replaying a program over torch's buffers;
- :mod:`~engine.contract.cost`: :func:`cost_report` and its :class:`CostReport`;
- :mod:`~engine.contract.conv`: conv programs (``conv2d`` targets): :func:`compile_conv_program`, the conv sequences,
  their FLOPs, memory replay and :func:`conv_cost_report`.

Running a program on tensors is :func:`engine.nn.execute.run_program` (the torch layer).
"""
from engine.contract.cache import clear_cache
from engine.contract.cost import CostReport, ScheduleCost, cost_report
from engine.contract.program import Program, Step, StepRow, compile_program
from engine.contract.schedule import SCHEDULE_CHOICES, SCHEDULES, can_stream, check_schedule

__all__ = ["CostReport", "Program", "SCHEDULES", "SCHEDULE_CHOICES", "ScheduleCost", "Step", "StepRow", "can_stream",
           "check_schedule", "clear_cache", "compile_program", "cost_report"]
