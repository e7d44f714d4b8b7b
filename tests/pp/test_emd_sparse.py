"""The certified sparse exact-OT solver behind ``pp.ot_pairing(method="emd")``, against POT's dense ``ot.emd``.

Optimal plans are not unique under ties, so plans are compared by cost and marginals only.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import ot
import pytest
from scipy.spatial.distance import cdist

from pertgrn.pp import _emd_sparse

NUM_ITER = 10**7


def _cloud(rng, size, dims, *, spread=None, shift=0.0):
    spread = np.geomspace(3.0, 0.5, dims) if spread is None else spread
    centres = rng.normal(size=(4, dims)) * spread * 2
    return centres[rng.integers(4, size=size)] + rng.normal(size=(size, dims)) * spread + shift


def _costs(controls, cells):
    return np.ascontiguousarray(cdist(controls, cells, "sqeuclidean"))


def _problems():
    """(label, controls, cells): random, structured and degenerate transport problems."""
    rng = np.random.default_rng(0)
    out = []
    for k, (n, m, dims) in enumerate([(2, 3, 2), (3, 10, 2), (5, 7, 3), (20, 50, 4), (40, 200, 5), (50, 30, 3)]):
        out.append((f"random n={n} m={m}", _cloud(rng, m, dims), _cloud(rng, n, dims, shift=0.5 * k)))
    # far fewer controls than cells: each control is split over many cells
    out.append(("few controls n=200 m=15", _cloud(rng, 15, 3), _cloud(rng, 200, 3, shift=0.5)))
    # large enough for the subsampled auction phases and the shielded bids
    controls = _cloud(rng, 2000, 10)
    out.append(("larger n=100 m=2000", controls, _cloud(rng, 100, 10, shift=1.0)))
    out.append(("larger null n=120 m=2000", controls, _cloud(rng, 120, 10)))
    # m a multiple of n: a degenerate primal (many optimal bases)
    out.append(("m = 10 n", _cloud(rng, 400, 5), _cloud(rng, 40, 5, shift=1.0)))
    out.append(("m = n", _cloud(rng, 60, 3), _cloud(rng, 60, 3, shift=0.3)))
    # duplicated cells / controls: massive ties
    cells = _cloud(rng, 15, 4)
    out.append(("every cell twice", _cloud(rng, 300, 4), np.repeat(cells, 2, axis=0)))
    controls = _cloud(rng, 100, 4)
    out.append(("every control three times", np.repeat(controls, 3, axis=0), _cloud(rng, 30, 4, shift=0.5)))
    # the same distribution on both sides, and cells that are controls
    out.append(("identical distributions", _cloud(np.random.default_rng(5), 500, 6), _cloud(rng, 50, 6)))
    controls = _cloud(rng, 400, 6)
    out.append(("cells drawn from the controls", controls, controls[rng.choice(400, 40, replace=False)]))
    out.append(("cells = controls", controls[:50], controls[:50][::-1]))
    # float32-rounded coordinates (distinct costs collapse onto ties)
    controls32 = _cloud(rng, 600, 8).astype(np.float32).astype(np.float64)
    cells32 = _cloud(rng, 60, 8, shift=0.7).astype(np.float32).astype(np.float64)
    out.append(("float32-rounded", controls32, cells32))
    # integer lattice: many exactly equal costs
    out.append(("lattice", rng.integers(0, 4, size=(200, 2)).astype(float), rng.integers(0, 4, size=(25, 2)) + 0.0))
    return out


PROBLEMS = _problems()


def _dense_optimum(C):
    m, n = C.shape
    return ot.emd2(np.full(m, 1.0 / m), np.full(n, 1.0 / n), C, numItermax=NUM_ITER)


def _check_plan(C, ctrl, cell, mass, *, optimum):
    m, n = C.shape
    assert (mass > 0).all()
    np.testing.assert_allclose(np.bincount(ctrl, mass, minlength=m), 1.0 / m, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.bincount(cell, mass, minlength=n), 1.0 / n, rtol=1e-12, atol=0)
    cost = float(np.dot(mass, C[ctrl, cell]))
    scale = float(np.median(C))
    assert cost == pytest.approx(optimum, rel=1e-9, abs=1e-12 * scale)
    return cost


@pytest.fixture(params=["warm", "public"])
def warm_start(request):
    """Both restricted solvers: POT's private warm-started one (when usable) and the public ``ot.emd``."""
    if request.param == "warm":
        if _emd_sparse.private_sparse_solver() is None:
            pytest.skip("this POT has no usable warm-started sparse solver")
        return None
    return False


@pytest.mark.parametrize(("label", "controls", "cells"), PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_same_optimal_cost_and_exact_marginals_as_dense_emd(label, controls, cells, warm_start):
    C = _costs(controls, cells)
    ctrl, cell, mass, stats = _emd_sparse.certified_transport(
        C, num_iter=NUM_ITER, cells=cells, controls=controls, warm_start=warm_start
    )
    cost = _check_plan(C, ctrl, cell, mass, optimum=_dense_optimum(C))
    assert not stats["fallback"]
    assert stats["warm_start"] is (warm_start is None)
    assert stats["cost"] == pytest.approx(cost, rel=1e-12, abs=1e-300)
    if C.shape[0] > 1 and C.shape[1] > 1 and np.median(C) > 0:
        assert stats["r_min"] >= -stats["tol"]  # the certificate that was checked
    # a basic solution: no more nonzeros than a spanning tree of the bipartite graph
    assert mass.size <= C.shape[0] + C.shape[1] - 1


def test_many_random_problems():
    rng = np.random.default_rng(42)
    for _ in range(25):
        n = int(rng.integers(2, 40))
        m = int(rng.integers(2, 300))
        dims = int(rng.integers(1, 6))
        controls = rng.normal(size=(m, dims)) * rng.uniform(0.1, 10)
        cells = rng.normal(size=(n, dims)) + rng.normal(size=dims) * rng.uniform(0, 3)
        if rng.random() < 0.3:
            cells = np.round(cells, 1)
            controls = np.round(controls, 1)
        C = _costs(controls, cells)
        ctrl, cell, mass, stats = _emd_sparse.certified_transport(C, num_iter=NUM_ITER, cells=cells, controls=controls)
        _check_plan(C, ctrl, cell, mass, optimum=_dense_optimum(C))
        assert not stats["fallback"]


def test_trivial_problems():
    # one cell takes every control, one control serves every cell, all costs zero
    for shape in [(5, 1), (1, 4), (1, 1)]:
        C = np.random.default_rng(0).random(shape)
        ctrl, cell, mass, _ = _emd_sparse.certified_transport(C, num_iter=NUM_ITER)
        _check_plan(C, ctrl, cell, mass, optimum=_dense_optimum(C))
    C = np.zeros((7, 3))
    ctrl, cell, mass, stats = _emd_sparse.certified_transport(C, num_iter=NUM_ITER)
    _check_plan(C, ctrl, cell, mass, optimum=0.0)
    assert stats["cost"] == 0.0


def _poor_prices(C, scale):
    """Prices that make every control's candidates the wrong cells: only the certificate can repair them."""
    p = np.zeros(C.shape[1])
    p[0] = 1e6 * scale  # cell 0 is nobody's candidate: the first restricted problem is infeasible
    return p, 0


@pytest.fixture
def clustered():
    rng = np.random.default_rng(0)
    controls = rng.random((400, 2))
    cells = rng.random((40, 2)) * 0.2  # all cells in one corner: raw-cost neighbours are useless
    return controls, cells, _costs(controls, cells)


def test_poor_prices_still_give_the_optimum(clustered, monkeypatch, warm_start):
    controls, cells, C = clustered
    monkeypatch.setattr(_emd_sparse, "auction_prices", _poor_prices)
    ctrl, cell, mass, stats = _emd_sparse.certified_transport(
        C, num_iter=NUM_ITER, cells=cells, controls=controls, warm_start=warm_start
    )
    _check_plan(C, ctrl, cell, mass, optimum=_dense_optimum(C))
    assert stats["backbone"]  # the infeasible restricted problem got its north-west-corner backbone
    assert stats["rounds"] > 2  # the certificate found missing arcs and the loop added them
    assert not stats["fallback"]


@pytest.mark.parametrize("max_rounds", [1, 2])
def test_certificate_loop_is_bounded_and_falls_back_to_dense(clustered, monkeypatch, caplog, max_rounds):
    controls, cells, C = clustered
    monkeypatch.setattr(_emd_sparse, "auction_prices", _poor_prices)
    with caplog.at_level(logging.WARNING, logger="pertgrn"):
        ctrl, cell, mass, stats = _emd_sparse.certified_transport(
            C, num_iter=NUM_ITER, cells=cells, controls=controls, max_rounds=max_rounds
        )
    assert stats["fallback"] and stats["rounds"] == max_rounds
    assert any("dense network simplex" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    _check_plan(C, ctrl, cell, mass, optimum=_dense_optimum(C))


def test_iteration_limit_raises(clustered, warm_start):
    controls, cells, C = clustered
    with pytest.raises(_emd_sparse.NotConvergedError, match="iteration limit"), pytest.warns(UserWarning):
        _emd_sparse.certified_transport(C, num_iter=2, cells=cells, controls=controls, warm_start=warm_start)
    with pytest.raises(_emd_sparse.NotConvergedError), pytest.warns(UserWarning):
        _emd_sparse.dense_transport(C, 2)


def test_private_solver_is_feature_detected(monkeypatch):
    import ot.lp.emd_wrap

    def broken(*args):  # e.g. a future POT that dropped the warm-start arguments
        raise TypeError("emd_c_sparse() takes at most 6 positional arguments")

    _emd_sparse.private_sparse_solver.cache_clear()
    monkeypatch.setattr(ot.lp.emd_wrap, "emd_c_sparse", broken)
    try:
        assert _emd_sparse.private_sparse_solver() is None
        rng = np.random.default_rng(1)
        controls, cells = rng.random((80, 3)), rng.random((12, 3)) + 0.3
        C = _costs(controls, cells)
        ctrl, cell, mass, stats = _emd_sparse.certified_transport(C, num_iter=NUM_ITER)
        assert stats["warm_start"] is False  # the public ot.emd with a sparse cost did the work
        _check_plan(C, ctrl, cell, mass, optimum=_dense_optimum(C))
    finally:
        _emd_sparse.private_sparse_solver.cache_clear()


def test_auction_prices_are_approximate_duals():
    """The auction's prices are within a small fraction of the cost scale of the exact duals (up to a constant)."""
    rng = np.random.default_rng(3)
    controls, cells = _cloud(rng, 2000, 6), _cloud(rng, 100, 6, shift=0.5)
    C = _costs(controls, cells)
    scale = _emd_sparse.cost_scale(C)
    prices, bids = _emd_sparse.auction_prices(C, scale)
    _, log = ot.emd(np.full(2000, 1 / 2000), np.full(100, 1 / 100), C, log=True)
    error = -prices - log["v"]
    error -= np.median(error)
    assert bids >= 2000
    assert np.sqrt(np.mean(error**2)) < 0.01 * scale


@pytest.mark.parametrize("step", [2, 4, 7])
def test_coarse_subsample_keeps_every_cells_share_of_nearest_controls(step):
    """The coarse phases' controls: each cell's nearest controls are subsampled to within one of their share."""
    rng = np.random.default_rng(4)
    controls, cells = _cloud(rng, 3001, 5), _cloud(rng, 120, 5, shift=0.3)
    C = _costs(controls, cells)
    sub = _emd_sparse._stratified_subsample(C, step)
    assert sub.dtype == np.int64 and sub.size == -(-C.shape[0] // step)
    assert np.array_equal(sub, np.unique(sub))  # sorted, distinct
    nearest = C.argmin(axis=1)
    share = np.bincount(nearest, minlength=C.shape[1]) / step
    kept = np.bincount(nearest[sub], minlength=C.shape[1])
    assert np.abs(kept - share).max() < 1.0
    # a plain one-in-`step` sample does not (the imbalance the stratification removes)
    plain = np.bincount(nearest[::step], minlength=C.shape[1])
    assert np.abs(plain - share).max() >= 1.0


def test_kernels_are_cached_in_a_writable_directory():
    """numba compiles each kernel once and keeps it on disk (next to the module, or NUMBA_CACHE_DIR)."""
    for kernel in (_emd_sparse._auction, _emd_sparse._candidates, _emd_sparse._certificate):
        cache = kernel._cache
        assert type(cache).__name__ == "FunctionCache"
        path = cache._cache_path
        os.makedirs(path, exist_ok=True)
        assert os.access(path, os.W_OK)


def test_kernels_compile_without_a_cache_where_none_is_writable(monkeypatch):
    calls = []

    def njit(**options):
        calls.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return lambda func: func

    monkeypatch.setattr(_emd_sparse.numba, "njit", njit)

    def f(x):
        return x + 1

    assert _emd_sparse._jit(f)(1) == 2
    assert calls == [{"cache": True, "nogil": True}, {"nogil": True}]
