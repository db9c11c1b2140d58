"""Readable numbers for reports and the UI (``1.23k``, ``3.4 GFLOP``, ``12 MiB``, ``71.9x``), one-line reasons
from other libraries' errors, and whether data is text that can be printed and saved."""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

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


# a literal as repr() writes it: opened after a non-word character (so "the layer's" opens nothing), closed before one
_QUOTED = re.compile(r"""(?<!\w)(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")(?!\w)""")


def clip_quotes(message: str, limit: int = 48) -> str:
    """``message`` with every quoted literal longer than ``limit`` characters cut in its middle (``'aaaa…aaaa'``): a
    refusal quotes what was typed, which can be kilobytes pasted into a field; the reason must stay readable."""
    return _QUOTED.sub(lambda m: clip_middle(m.group(0), limit), message)


def clip_middle(text: str, limit: int = 48) -> str:
    """``text`` cut in its middle to about ``limit`` characters (``'99999…99999'``); short text unchanged."""
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return f"{text[:keep]}…{text[-keep:]}"


def dims_text(dims: Sequence[int], limit: int = 12) -> str:
    """``[4, 8, 8] -> '4 x 8 x 8'``; a longer list shows its ends and its length (``'7 x 7 x … x 7 (2000 dims)'``)."""
    dims = list(dims)
    if len(dims) <= limit:
        return " x ".join(map(str, dims))
    return " x ".join(map(str, dims[:limit // 2])) + " x … x " + " x ".join(map(str, dims[-2:])) + \
        f" ({len(dims)} dims)"


def int_text(n: int) -> str:
    """An integer in a message: exact up to 15 digits, else its power of two (``'about 2^6942'``)."""
    return str(n) if abs(n) < 10 ** 15 else f"about {'-' if n < 0 else ''}2^{abs(n).bit_length() - 1}"


def torch_load_reason(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one line: its unpickler's own sentence when it
    has one (e.g. "Unsupported global: GLOBAL datetime.date ..."), else the first line of its text; never its advice
    to load the file with weights_only=False (unsafe for a file from elsewhere), nor its terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        reason = " ".join(reason.split(". Please use")[0].split())
        if reason:
            return reason
    line = first_line(text) or type(error).__name__
    if "weights_only" in line or "can still be loaded" in line:  # advice, not a reason
        return type(error).__name__
    return line


def printable(text: str) -> str:
    """``text`` with its non-printable characters escaped (a newline as ``\\n``), so that one name stays on one line
    of a table."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def int_list(text: str, separators: str = ",x", spaces: bool = False) -> list[int]:
    """``"3,32x32"`` -> ``[3, 32, 32]``: integers (signed) between any of ``separators`` (whitespace around them
    allowed; with ``spaces``, whitespace alone separates too). ``ValueError`` when any part is not an integer, an
    empty one included (``"3,,32"``, ``"3x"``): every list reader takes exactly what is written, none drops a part."""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    split = r"\s*[" + re.escape(separators) + r"]\s*" + (r"|\s+" if spaces else "")
    parts = re.split(split, text.strip())
    if not all(re.fullmatch(r"-?[0-9]+", p) for p in parts):
        raise ValueError(f"not integers separated by {' or '.join(separators)}: {text!r}")
    return [int(p) for p in parts]


def is_unicode_text(value: Any) -> bool:
    """Whether every string in ``value`` (nested dicts and lists too) can be written as UTF-8: JSON's \\ud800
    escapes, and bytes a terminal could not decode, read into lone surrogates, which every print or save then fails
    on. Data that is not JSON at all counts as text here (other checks name that)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except (TypeError, ValueError, RecursionError):
        return True
    return True


def refuse_unknown_keys(d: Mapping[str, Any], known: Iterable[str], what: str,
                        error: Callable[[str], Exception] = ValueError) -> None:
    """``error`` naming the keys of ``d`` that are not ``known`` (a field a reader drops silently is a setting the
    writer thought it made)."""
    known = set(known)
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise error(f"{what} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                    f"(known: {', '.join(sorted(known))})")


def unique_keys(error: Callable[[str], Exception], shown: Callable[[Any], str] = repr
                ) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A ``json.loads`` ``object_pairs_hook`` that refuses a key given twice in one object (which of the two would
    count is the reader's guess) with ``error(message)``, the key as ``shown`` prints it."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise error(f"the key {shown(k)} appears twice in one JSON object: keep one")
            out[k] = v
        return out

    return hook
