"""Accuracy of the blocked row sums and of tiny softplus numerators (issue 13).

- Rows of many equal terms, [0, -c, ..., -c]: every accumulator lane adds its terms in sequence,
  and a chain of m equal terms drifts by up to (m - 1) u. With a whole block per lane chain
  (m = 128-256) softmax broke the 2e-6 contract by 1.5x (avx512, avx2) to 3.8x (scalar); the
  lanes now join a per-block partial every ``numerics.reductions.FLUSH_TERMS`` terms.
- softplus_l1 / lssa rows whose softplus terms flush to 0 in float32 while the sum is tiny
  (z = [-80, -95]: y = [1, 0] instead of [1, 3.06e-7]): such rows restart in softmax(z).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TARGETS, check, kernel, run, run_many

import softgen
from softgen.numerics.reductions import FLUSH_TERMS, flush_steps

HOST = softgen.host_target()
EQUAL_C = (0.5, 1.1, 3.0, 7.0, 11.3)


def equal_rows(block: int) -> list[np.ndarray]:
    """[0, -c, ..., -c] over two blocks and a bit (the tail in a third), and one of 3000."""
    out = []
    for n in (2 * block + 5, 3000):
        x = np.repeat(-np.asarray(EQUAL_C, np.float32)[:, None], n, axis=1)
        x[:, 0] = 0.0
        out.append(x)
    return out


CASES = [pytest.param(t, "three-pass-reload", "c", id=f"{t}-c") for t in TARGETS] + [
    pytest.param(HOST, alg, "c", id=f"{HOST}-{alg}-c") for alg in ("two-pass", "online")] + [
    pytest.param(HOST, "three-pass-reload", "tvm", id=f"{HOST}-tvm")]


@pytest.mark.parametrize("target,alg,backend", CASES)
def test_equal_terms_rows(target, alg, backend):
    """softmax (the sum, the extexp (v, e) pair of two-pass, the online (m, d) pair) within 2e-6."""
    k = kernel("softmax", alg, target, backend)
    xs = equal_rows(k.schedule.block)
    for x, y in zip(xs, run_many(k, xs)):
        check(k, x, y, f"equal terms n={x.shape[-1]}")


def test_flush_steps():
    """An accumulator takes ceil(unroll / accumulators) terms per main-loop step."""
    assert flush_steps(4, 2) * 2 == FLUSH_TERMS
    assert flush_steps(4, 4) == FLUSH_TERMS
    assert flush_steps(3, 2) == FLUSH_TERMS // 2
    assert flush_steps(64, 1) == 1


def softplus_rows(lam: float = 1.0) -> np.ndarray:
    """Rows of z = lam x whose f32 softplus sum is tiny (some terms flush, some do not, several
    near each other: in place the fallback reads their stored softplus), all flushed, mixed with
    -inf, one that stays on the softplus path, a NaN row."""
    z = np.array([[-80, -95, -90, -100], [-20, -30, -87, -88.5], [-17, -200, -1e30, -np.inf],
                  [-100, -101, -102, -300], [0, -95, -100, -1], [np.nan, -100, -90, -95],
                  [-80, -80.5, -81, -95], [-20, -20.5, -21, -100], [-86.5, -87, -87.5, -88]])
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(z), z / lam, z).astype(np.float32)


SOFTPLUS = [pytest.param(op, alg, t, "c", id=f"{op}-{alg}-{t}") for op in ("softplus_l1", "lssa")
            for alg in ("direct", "direct-reload") for t in (HOST, "scalar")] + [
    pytest.param(op, "direct-reload", HOST, "tvm", id=f"{op}-tvm") for op in ("softplus_l1", "lssa")]


@pytest.mark.parametrize("op,alg,target,backend", SOFTPLUS)
def test_tiny_softplus_sums(op, alg, target, backend):
    """Out of place and in place (direct-reload stores the weights before the row may restart)."""
    k = kernel(op, alg, target, backend)
    # lssa: lambda = log(64) log(N), N the row's kept (> -inf) keys: z as above
    n = np.sum(softplus_rows() > -np.inf, axis=-1, keepdims=True)
    x = softplus_rows(math.log(64) * np.log(n)) if op == "lssa" else softplus_rows()
    y = run(k, x)
    check(k, x, y, "tiny softplus sums")
    if k.runnable:
        xi = x.copy()
        k(xi, out=xi)
        np.testing.assert_array_equal(xi, y)
