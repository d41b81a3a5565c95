"""The starting latents as a specified function of (seed, element index), so that every runtime draws the
same numbers: this module (numpy), the C/C++ runtime (runtime/cpp/src/noise.cpp) and anything else that
implements the three steps below gets bit-identical float32 noise on any machine.

1. Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the generator of
   cuRAND, JAX and PyTorch's CUDA RNG): key = (seed mod 2^32, seed >> 32), counter = (n mod 2^32, n >> 32,
   0, 0) for element n of the C-ordered array, giving four 32-bit words a, b, c, d.
2. Two uniforms with 53 random bits each: u1 = ((a >> 5) * 2^26 + (b >> 6) + 1) / 2^53 in (0, 1] and
   u2 = ((c >> 5) * 2^26 + (d >> 6)) / 2^53 in [0, 1).
3. Box-Muller, z = sqrt(-2 log u1) * cos(2 pi u2), evaluated in float64 with only IEEE-exact operations
   (+ - * /, sqrt, frexp, floor) through the fixed polynomials below, in the order written, then rounded
   to float32. Library log / cos are not used: their last bit differs between libm versions and SIMD
   paths, which would let two machines draw different images from one seed.

A request's `seed` numbers the elements of the whole (B, C, h, w) array; `seeds` (one per prompt) draws
each row alone, counters from 0, so a row equals the one-prompt request with that seed.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key schedule (golden ratio, sqrt(3) - 1)
ROUNDS = 10
LN2 = 0.6931471805599453
HALF_PI = 1.5707963267948966
SQRT_HALF = 0.7071067811865476
# 1 / (2k + 1), k = 1..12: log m = 2 s (1 + s^2/3 + s^4/5 + ...), s = (m - 1) / (m + 1), |s| <= 0.172
LOG_SERIES = tuple(1.0 / (2 * k + 1) for k in range(1, 13))
# (-1)^k / (2k)! and (-1)^k / (2k + 1)!, k = 1..10: cos and sin on [-pi/4, pi/4]
COS_SERIES = tuple((-1) ** k / math.factorial(2 * k) for k in range(1, 11))
SIN_SERIES = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(1, 11))
MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter: Sequence[np.ndarray], key: tuple[int, int]) -> list[np.ndarray]:
    """Philox4x32-10 on arrays of counters (four uint32 words each as uint64 arrays); returns four uint64
    arrays holding the 32-bit output words."""
    c0, c1, c2, c3 = (np.asarray(w, dtype=np.uint64) for w in counter)
    k0, k1 = key
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    for r in range(ROUNDS):
        p0, p1 = m0 * c0, m1 * c2  # 32 x 32 -> 64 bits, exact in uint64
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & MASK32)
        k0, k1 = (k0 + PHILOX_W[0]) & 0xFFFFFFFF, (k1 + PHILOX_W[1]) & 0xFFFFFFFF
    return [c0, c1, c2, c3]


def _log_unit(u: np.ndarray) -> np.ndarray:
    """log(u) for u in (0, 1], float64, by the fixed series (see the module docstring)."""
    m, e = np.frexp(u)  # u = m 2^e, m in [0.5, 1): exact
    low = m < SQRT_HALF
    m = np.where(low, m * 2.0, m)  # exact
    e = np.where(low, e - 1, e).astype(np.float64)
    f = m - 1.0  # exact (m in [0.70, 1.42))
    s = f / (2.0 + f)
    s2 = s * s
    acc = np.full_like(s, LOG_SERIES[-1])
    for c in LOG_SERIES[-2::-1]:
        acc = acc * s2 + c
    return e * LN2 + (s + s) * (acc * s2 + 1.0)


def _cos_turn(u: np.ndarray) -> np.ndarray:
    """cos(2 pi u) for u in [0, 1), float64: a quarter-turn reduction (exact) then the fixed series."""
    t = u * 4.0  # exact
    q = np.floor(t + 0.5)  # nearest quarter turn (t + 0.5 is exact below 4)
    a = (t - q) * HALF_PI  # t - q exact, |a| <= pi/4
    a2 = a * a
    c = np.full_like(a, COS_SERIES[-1])
    s = np.full_like(a, SIN_SERIES[-1])
    for k in range(len(COS_SERIES) - 2, -1, -1):
        c = c * a2 + COS_SERIES[k]
        s = s * a2 + SIN_SERIES[k]
    c = c * a2 + 1.0
    s = a + a * (s * a2)
    quarter = q.astype(np.int64) % 4
    return np.select([quarter == 0, quarter == 1, quarter == 2], [c, -s, -c], s)


def gaussian(seed: int, count: int, start: int = 0) -> np.ndarray:
    """Elements start .. start + count - 1 of seed's standard normal stream, float32."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed} must be in [0, 2**64)")
    n = np.arange(start, start + count, dtype=np.uint64)
    a, b, c, d = philox4x32((n & MASK32, n >> np.uint64(32), np.zeros_like(n), np.zeros_like(n)),
                            (seed & 0xFFFFFFFF, seed >> 32))
    scale = 2.0 ** -53
    u1 = (((a >> np.uint64(5)) << np.uint64(26)) + (b >> np.uint64(6)) + np.uint64(1)).astype(np.float64) * scale
    u2 = (((c >> np.uint64(5)) << np.uint64(26)) + (d >> np.uint64(6))).astype(np.float64) * scale
    return (np.sqrt(-2.0 * _log_unit(u1)) * _cos_turn(u2)).astype(np.float32)


def initial_noise(shape: Sequence[int], seed: int, seeds: Sequence[int] | None = None) -> np.ndarray:
    """The starting latents (float32, `shape`): one stream for the whole array, or (seeds) one per row."""
    shape = tuple(int(s) for s in shape)
    if seeds is None:
        return gaussian(int(seed), int(np.prod(shape))).reshape(shape)
    row = int(np.prod(shape[1:]))
    return np.stack([gaussian(int(s), row).reshape(shape[1:]) for s in seeds])
