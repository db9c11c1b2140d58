"""Layer 2, contraction: programs of einsum steps compiled from designs, path search, and the cost and memory
model read off those programs. Depends on :mod:`engine.design` only (and never imports torch)."""
from engine.contract.cost import cost_report, format_report
from engine.contract.program import SCHEDULES, Program, Step, can_stream, compile_program

__all__ = ["Program", "SCHEDULES", "Step", "can_stream", "compile_program", "cost_report", "format_report"]
