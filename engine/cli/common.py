"""Helpers every ``tnstudio`` command shares: the user-error type and argument readers that turn bad input into
one clear message (exit status 2) instead of a traceback."""
from __future__ import annotations

from engine.design.factorize import parse_factors
from engine.design.model import Design, DesignError, load_design


class UserError(Exception):
    """A problem with the user's input: printed as one line without a traceback, exit status 2."""


def read_design(path: str) -> Design:
    """Load and validate a design file; a missing file or an invalid design becomes a :class:`UserError`."""
    try:
        return load_design(path)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except DesignError as e:
        raise UserError(f"{path}: invalid design:\n" + "\n".join(f"  - {p}" for p in e.problems)) from None


def read_factors(text: str | None) -> list[int] | None:
    """Parse ``"8,8,4"`` into ``[8, 8, 4]`` (``None`` stays ``None``); bad text becomes a :class:`UserError`."""
    try:
        return parse_factors(text)
    except ValueError as e:
        raise UserError(str(e)) from None
