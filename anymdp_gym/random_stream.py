"""Counter-based random streams for Numba kernels: SplitMix64 states ``rng[i]`` advanced in place.

Why: every env or agent of a compiled batch owns a stream, so each consumer (env, batched env,
generator, solver) replays the same numbers for the same seed, whatever runs beside it; states
come from a ``numpy.random.Generator`` (``seed_streams``). Callers cached in other files inline
these kernels: after this file changes, delete their ``__pycache__/*.nbi`` (Numba keys a cache to
its own file).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53


def seed_streams(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` independent SplitMix64 states drawn from ``rng``."""
    return rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)


@njit(cache=True, inline="always")
def next_u64(rng, i):
    z = rng[i] + _GOLDEN
    rng[i] = z
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def uniform(rng, i):
    """Uniform in [0, 1) from stream ``i``."""
    return np.float64(next_u64(rng, i) >> _S11) * _TO_UNIT


def _ziggurat_tables(layers=256, r=3.6541528853610088, area=4.92867323399e-3):
    """Layer edges ``x`` and heights ``f(x)`` of Marsaglia & Tsang's 256-layer ziggurat.

    Layer ``i`` covers ``x < x[i]`` between heights ``f(x[i])`` and ``f(x[i + 1])``; layer 0 is
    the base strip ``[0, r]`` plus the tail, drawn as a rectangle of width ``area / f(r)``.
    """
    x = np.zeros(layers + 1)
    x[0], x[1] = area / np.exp(-0.5 * r * r), r
    for i in range(1, layers - 1):
        x[i + 1] = np.sqrt(-2.0 * np.log(area / x[i] + np.exp(-0.5 * x[i] * x[i])))
    return x, np.exp(-0.5 * x * x)


_ZIG_X, _ZIG_F = _ziggurat_tables()
_ZIG_R = _ZIG_X[1]
_LOW8, _S8, _ONE = np.uint64(0xFF), np.uint64(8), np.uint64(1)


@njit(cache=True, inline="always")
def normal(rng, i):
    """Standard normal from stream ``i``: Marsaglia & Tsang's ziggurat, exact.

    99% of draws cost one ``uint64`` (8 bits pick the layer, one the sign, 53 the position),
    a table read and a compare; the rest fall back to the wedge or tail tests, which draw more
    numbers from the same stream, so the stream stays reproducible.
    """
    while True:
        z = next_u64(rng, i)
        layer = z & _LOW8
        sign = -1.0 if (z >> _S8) & _ONE else 1.0
        x = np.float64(z >> _S11) * _TO_UNIT * _ZIG_X[layer]
        if x < _ZIG_X[layer + 1]:
            return sign * x
        if layer == 0:  # tail beyond r
            while True:
                a = -np.log1p(-uniform(rng, i)) / _ZIG_R
                b = -np.log1p(-uniform(rng, i))
                if b + b > a * a:
                    return sign * (_ZIG_R + a)
        height = _ZIG_F[layer] + uniform(rng, i) * (_ZIG_F[layer + 1] - _ZIG_F[layer])
        if height < np.exp(-0.5 * x * x):
            return sign * x


@njit(cache=True, inline="always")
def categorical(cdf, rng, i):
    """Index drawn from a cumulative distribution (padded with 1.0)."""
    u = uniform(rng, i)
    k = 0
    while k < cdf.size - 1 and u >= cdf[k]:
        k += 1
    return k
