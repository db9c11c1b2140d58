"""Helpers every ``tnstudio`` command shares: the user-error type and argument readers that turn bad input into
one clear message (exit status 2) instead of a traceback."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from engine.design.factorize import parse_factors
from engine.design.model import Design, DesignError, load_design
from engine.format import torch_load_reason


log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem with the user's input: printed as one line without a traceback, exit status 2."""


def read_design(path: str) -> Design:
    """Load and validate a design file; a missing file or an invalid design becomes a :class:`UserError`."""
    try:
        return load_design(path)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except DesignError as e:
        raise UserError(design_problems(path, e.problems)) from None


def design_problems(path: str, problems: list[str]) -> str:
    """The message for an invalid design: one line for one problem, else a line per problem."""
    if len(problems) == 1:
        return f"{path}: invalid design: {problems[0]}"
    return f"{path}: invalid design ({len(problems)} problems):\n" + "\n".join(f"  - {p}" for p in problems)


def read_factors(text: str | None, flag: str = "") -> list[int] | None:
    """Parse ``"8,8,4"`` into ``[8, 8, 4]`` (``None`` stays ``None``); bad text becomes a :class:`UserError`
    (naming ``flag`` when given)."""
    try:
        return parse_factors(text)
    except ValueError as e:
        raise UserError(f"{flag}: {e}" if flag else str(e)) from None


def output_file(text: str, example: str = "layer.py") -> Path:
    """``-o`` as a file path: an existing folder, or a path ending in a separator, is a :class:`UserError` that
    suggests ``example`` inside it (missing parent folders are created when the file is written)."""
    p = Path(text)
    try:
        folder = text.endswith(("/", os.sep)) or p.is_dir()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise cannot_write(p, e) from None
    if folder:
        raise UserError(f"-o {text}: is a folder; give a file name inside it (e.g. {p / example})")
    return p


def cannot_write(path: str | os.PathLike, e: OSError) -> UserError:
    """The :class:`UserError` for an output that could not be written (permissions, a file where a folder is
    needed, a full disk)."""
    return UserError(f"cannot write {os.fspath(path)}: {e.strerror or e}")


def load_state_file(path: str) -> dict[str, Any]:
    """A state dict (name -> tensor) from a weights file, loaded with ``weights_only=True`` (never code from data); a
    training checkpoint's ``model`` / ``state_dict`` entry is unwrapped. Anything else is a one-line UserError."""
    import torch

    p = Path(path)
    try:
        exists, regular = p.exists(), p.is_file()
    except OSError as e:  # a name longer than the file system allows
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not exists:
        raise UserError(f"{path}: no such weights file")
    if not regular:  # a folder, or a fifo that would block torch.load
        raise UserError(f"{path} is not a regular file (a folder, device, fifo or socket), not a weights file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, zip errors):
        log.debug("torch.load(%s) failed", p, exc_info=True)  # the user gets the one-line reason below
        raise UserError(f"{path}: not a state dict torch can load with weights_only=True "
                        f"({torch_load_reason(e)})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict (name -> tensor), found {type(state).__name__}")
    from engine.nn.state import state_problem

    problem = state_problem(state)
    if problem:
        raise UserError(f"{path}: {problem}")
    return state
