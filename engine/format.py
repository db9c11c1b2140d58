"""Readable numbers for reports and the UI (``1.23k``, ``3.4 GFLOP``, ``12 MiB``, ``71.9x``) and one-line reasons
from other libraries' errors."""
from __future__ import annotations

_SI = (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))  # uppercase M: mega, never milli
_BINARY = (("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10))


_FLOAT_MAX = 2 ** 1000  # integers from here on are shown as powers of two (a float cannot hold them)


def _huge(n: float) -> str | None:
    """``'2^1234'`` for an integer too large for a float, else None."""
    if isinstance(n, int) and abs(n) >= _FLOAT_MAX:
        return f"{'-' if n < 0 else ''}2^{abs(n).bit_length() - 1}"
    return None


def si(n: float, unit: str = "") -> str:
    """``1234 -> '1.23k'``, ``912 -> '912'``; with ``unit``: ``3.4e9, 'FLOP' -> '3.4 GFLOP'``."""
    huge = _huge(n)
    if huge is not None:
        return f"{huge} {unit}" if unit else huge
    for prefix, div in _SI:
        if abs(n) >= div:
            text = f"{n / div:.3g}"
            return f"{text} {prefix}{unit}" if unit else f"{text}{prefix}"
    text = f"{n:.4g}" if isinstance(n, float) and not float(n).is_integer() else f"{int(n)}"
    return f"{text} {unit}" if unit else text


def nbytes(n: float) -> str:
    """Binary units: ``1536 -> '1.5 KiB'``, ``10 -> '10 B'``."""
    huge = _huge(n)
    if huge is not None:
        return f"{huge} B"
    for unit, div in _BINARY:
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} B"


def ratio(x: float) -> str:
    """A compression factor: ``12.345 -> '12.3x'``, ``0.5 -> '0.5x'``, ``12345 -> '12,345x'``."""
    huge = _huge(x)
    if huge is not None:
        return huge + "x"
    return f"{x:,.3g}x" if x < 1000 else f"{x:,.0f}x"


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's text (a library's message can run to paragraphs), or the error's type
    name when it has no text: for one-line messages that quote it."""
    text = str(error)
    return next((ln.strip() for ln in text.splitlines() if ln.strip()),
                type(error).__name__ if isinstance(error, BaseException) else "")
