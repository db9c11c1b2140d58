"""Balanced integer factorisations of layer sizes into tensor legs."""
from __future__ import annotations

import math


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order (with repetition)."""
    if n < 1:
        raise ValueError(f"cannot factorise {n}: need an integer >= 1")
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def balanced_factors(n: int, k: int) -> list[int]:
    """``k`` factors of ``n`` as equal as possible (largest primes placed first into the smallest bucket).

    Buckets that get no prime are 1; factors are returned in descending order.
    """
    if k < 1:
        raise ValueError(f"need at least one factor, got k={k}")
    buckets = [1] * k
    for p in sorted(prime_factors(n), reverse=True):
        i = min(range(k), key=lambda j: buckets[j])
        buckets[i] *= p
    return sorted(buckets, reverse=True)


def default_legs(in_features: int, out_features: int) -> int:
    """A default number of legs: factors of about 8, at least 2 and at most 8 legs."""
    m = max(in_features, out_features)
    return max(2, min(8, math.ceil(math.log2(max(m, 2)) / 3)))


def parse_factors(text: str | None) -> list[int] | None:
    """Parse ``"4,8,8"`` (or ``"4x8x8"``) into ``[4, 8, 8]``; ``None`` or empty gives ``None``."""
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).replace("x", ",").replace("*", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise ValueError(f"factors must be integers separated by commas, got {text!r}") from None
    if any(v < 1 for v in vals):
        raise ValueError(f"factors must be >= 1, got {text!r}")
    return vals


def check_factors(features: int, factors: list[int], what: str) -> list[int]:
    if math.prod(factors) != features:
        raise ValueError(f"{what} factors {' x '.join(map(str, factors))} multiply to {math.prod(factors)}, "
                         f"not {features}")
    return list(factors)
