"""Balanced integer factorisations of layer sizes into tensor legs."""
from __future__ import annotations

import math

from engine.format import dims_text, int_list, int_text


TRIAL_LIMIT = 1 << 16  # trial division up to here; a cofactor below TRIAL_LIMIT^2 left over is then prime
RHO_STEPS = 1 << 18  # Pollard-Brent iterations per attempt before giving up on a cofactor


def _is_probable_prime(n: int) -> bool:
    """Miller-Rabin with fixed bases (exact below 3.3e24, a vanishing error probability above)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _rho(n: int) -> int | None:
    """A non-trivial factor of the composite ``n`` by Pollard-Brent, or None within :data:`RHO_STEPS`."""
    for c in range(1, 6):
        y, m, g, q, steps = 2, 128, 1, 1, 0
        x = ys = y
        r = 1
        while g == 1 and steps < RHO_STEPS:
            x = y
            for _ in range(r):
                y = (y * y + c) % n
            k = 0
            while k < r and g == 1:
                ys = y
                for _ in range(min(m, r - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += m
            steps += r
            r *= 2
        if g == n:
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if 1 < g < n:
            return g
    return None


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order (with repetition), in bounded time: trial division up to 2^16,
    then Miller-Rabin and Pollard-Brent for what is left; a cofactor neither finds a factor of raises
    ``ValueError`` (give the factors explicitly)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"cannot factorise {n!r}: need an integer >= 1")
    out, p = [], 2
    while p < TRIAL_LIMIT and p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1 if p == 2 else 2
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if m < TRIAL_LIMIT * TRIAL_LIMIT or _is_probable_prime(m):
            out.append(m)
            continue
        f = _rho(m)
        if f is None:
            raise ValueError(f"cannot factorise {m} (a factor of the layer size) in reasonable time: give the "
                             f"factorisation explicitly (e.g. --in-factors / --out-factors)")
        stack += [f, m // f]
    return sorted(out)


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
    try:
        vals = int_list(str(text), ",x*")  # "3,x" and "4,,4" too: no part is dropped
    except ValueError:
        raise ValueError(f"factors must be integers separated by commas, got {text!r}") from None
    if any(v < 1 for v in vals):
        raise ValueError(f"factors must be >= 1, got {text!r}")
    return vals


def check_factors(features: int, factors: list[int], what: str) -> list[int]:
    if math.prod(factors) != features:
        raise ValueError(f"{what} factors {dims_text(factors)} multiply to {int_text(math.prod(factors))}, "
                         f"not {features}")
    return list(factors)
