"""Exact optimal transport between a condition's cells and the control cells, certified and fast.

The problem: ``n`` perturbed cells (mass ``1/n`` each) against ``m`` control cells (mass ``1/m``
each), cost ``C[j, i]`` = squared distance of control ``j`` and cell ``i``; ``m`` is usually much
larger than ``n`` (Norman 2019: ~350 cells against 8,907 controls). The dense network simplex on
all ``n m`` arcs spends most of its time pivoting through arcs that can never be optimal. Here:

1. **Prices.** An ε-scaling forward auction (controls bid for the cells' ``m/n`` slots) gives
   approximate dual prices ``p`` of the cells. It runs its coarse phases on a subsample of the
   controls and, in the fine phases, lets a control scan only its few cheapest cells as long as a
   bound proves that no other cell can be cheaper.
2. **Candidate arcs.** Each control keeps its 4 cheapest cells by *price-adjusted* cost
   ``C[j, i] + p[i]`` (the optimal partner is among them almost always, while nearest neighbours
   by raw cost are not: the optimal plan moves mass far from them when the distributions differ).
3. **Fixing.** Controls whose best cell beats the second one by a clear margin are assigned to it
   provisionally; the network simplex then sees only the other controls (about a third).
4. **Restricted solve.** POT's network simplex on the sparse bipartite graph, warm-started from
   the prices when the installed POT exposes it, else through the public ``ot.emd`` with a sparse
   cost.
5. **Certificate.** With the restricted problem's duals ``(u, v)``, every one of the ``n m``
   reduced costs ``C[j, i] - u[i] - v[j]`` is checked. If none is below ``-tol`` the plan is
   optimal for the full problem up to ``tol`` (the dual is then feasible up to ``tol`` and has the
   primal's cost): ``tol = 1e-10 * (cost + 0.01 * median cost)``. Otherwise the violating arcs
   are added, their controls unfixed, and the restricted problem is solved again; after
   ``MAX_ROUNDS`` rounds the dense ``ot.emd`` solves the condition instead, with a warning.

Steps 1–3 only decide how fast the answer comes; step 5 decides that it is exact. The kernels
are compiled by numba (cached on disk, ``nogil`` so that threads solve conditions in parallel).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numba
import numpy as np

from pertgrn._utils import logger

#: Certificate rounds (restricted solve + check) before falling back to the dense solver.
MAX_ROUNDS = 30
#: Candidate cells per control (by price-adjusted cost), and arcs added per violating control.
N_CANDIDATES = 4
N_ADDED = 4
#: Relative optimality tolerance of the certificate (of the transport cost).
RELATIVE_TOL = 1e-10
#: Absolute floor of the tolerance, relative to the median cost (for near-zero optimal costs).
SCALE_TOL = 1e-12
#: A control is fixed when its second-best price-adjusted cost exceeds its best by this × median cost.
FIX_MARGIN = 5e-3
#: ε-scaling schedule of the auction, relative to the median cost.
EPS_START, EPS_FINAL, EPS_FACTOR = 0.2, 1e-3, 4.0
#: Coarse auction phases run on one in ``SUBSAMPLE`` controls (stratified by nearest cell).
SUBSAMPLE, SUBSAMPLE_PHASES = 4, 3
#: Cheapest cells remembered per control (the "shield") in the fine auction phases and in the
#: coarse ones, where prices rise in large steps and a remembered list soon goes stale.
SHIELD, SHIELD_COARSE = 4, 2
#: Bids per bidder and phase after which the auction stops (prices are only a warm start).
MAX_BIDS_PER_BIDDER = 200

_INF = np.inf


def _jit(func=None, *, inline: bool = False):
    """``numba.njit(nogil=True)`` with an on-disk cache, or without one where no cache directory is writable.

    numba caches next to this file, or, where the package directory is read-only, in the user's
    cache directory (``NUMBA_CACHE_DIR`` overrides both). Only when neither is writable does it
    refuse to cache; the kernels are then compiled once per process (about 3 s). ``inline=True``
    inlines the function into its callers (numba's ``inline="always"``): a call that passes many
    arrays costs more than a short body.
    """
    if func is None:
        return functools.partial(_jit, inline=inline)
    options = {"nogil": True, **({"inline": "always"} if inline else {})}
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError as err:  # "cannot cache function ...: no locator available"
        logger.debug("ot_pairing: numba cannot cache %s (%s); compiling per process.", func.__name__, err)
        return numba.njit(**options)(func)


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------


@_jit
def _cheapest(C, j, prices, topv, topi):  # pragma: no cover - compiled
    """The ``len(topv)`` cheapest cells of control ``j`` by ``C[j] + prices``, ascending, into ``topv``/``topi``."""
    last = topv.shape[0] - 1
    for k in range(last + 1):
        topv[k] = _INF
        topi[k] = -1
    for i in range(C.shape[1]):
        v = C[j, i] + prices[i]
        if v < topv[last]:
            k = last
            while k > 0 and topv[k - 1] > v:
                topv[k] = topv[k - 1]
                topi[k] = topi[k - 1]
                k -= 1
            topv[k] = v
            topi[k] = i


@_jit(inline=True)  # called once per bid: inlined, the auction runs ~10 % faster
def _best_two(C, j, c, curp, shield, lst, lst_cost, bound, has_list, topv, topi):  # pragma: no cover - compiled
    """Cheapest and second-cheapest cell of control ``j`` (bidder row ``c`` of the lists) by ``C[j] + curp``.

    Returns ``(w1, i1, w2, C[j, i1])``. With ``shield > 0``, scans the control's remembered cells
    when their minimum is at most ``bound[c]`` (every other cell costs at least that, since prices
    only rise), else scans all cells and remembers the ``shield`` cheapest and the next value.
    """
    if shield > 0 and has_list[c]:
        w1 = np.inf
        w2 = np.inf
        i1 = -1
        k1 = 0
        for k in range(shield):
            i = lst[c, k]
            v = lst_cost[c, k] + curp[i]
            if v < w1:
                w2 = w1
                w1 = v
                i1 = i
                k1 = k
            elif v < w2:
                w2 = v
        if w1 <= bound[c]:
            if bound[c] < w2:
                w2 = bound[c]
            return w1, i1, w2, lst_cost[c, k1]
    _cheapest(C, j, curp, topv, topi)
    if shield > 0:
        for k in range(shield):
            lst[c, k] = topi[k]
            lst_cost[c, k] = C[j, topi[k]]
        bound[c] = topv[shield]
        has_list[c] = True
    return topv[0], topi[0], topv[1], C[j, topi[0]]


@_jit
def _auction(C, bidders, pieces, eps_seq, p, shield, max_bids):  # pragma: no cover - compiled
    """ε-scaling forward auction; updates the cell prices ``p`` in place, returns the number of bids.

    ``bidders`` are row indices of ``C`` (controls), each split into ``pieces`` indivisible units
    of demand; cell ``i`` has ``cap[i]`` slots, ``sum(cap)`` = number of units, and keeps the bids
    it holds in a min-heap. Unassigned units bid first in, first out (Gauss-Seidel). Between
    phases, a unit keeps its cell if it still satisfies ε-complementary slackness at the new ε
    with every slot priced at its cell's final price (lowering a slot to the cell's lowest price
    breaks no one's slackness); the others bid again. ``shield > 0`` lets bids scan only a unit's
    cheapest cells (see :func:`_best_two`). Returns -1 if a phase exceeded ``max_bids`` bids
    (prices are then left as they are).
    """
    n = C.shape[1]
    n_ctrl = bidders.shape[0]
    nb = n_ctrl * pieces
    base = nb // n
    extra = nb - base * n
    cap = np.empty(n, np.int64)
    off = np.empty(n + 1, np.int64)
    off[0] = 0
    for i in range(n):
        cap[i] = base + (1 if i < extra else 0)
        off[i + 1] = off[i] + cap[i]
    held_p = np.empty(off[n], np.float64)
    held_b = np.empty(off[n], np.int64)
    cnt = np.zeros(n, np.int64)
    assign = np.full(nb, -1, np.int64)
    curp = p.copy()
    size = nb + 1
    queue = np.empty(size, np.int64)
    topv = np.empty(shield + 1 if shield > 0 else 2, np.float64)
    topi = np.empty(topv.shape[0], np.int64)
    n_list = shield if shield > 0 else 1
    lst = np.empty((n_ctrl, n_list), np.int32)
    lst_cost = np.empty((n_ctrl, n_list), np.float64)  # the costs too: one cache line per bid, not `shield`
    bound = np.empty(n_ctrl, np.float64)
    has_list = np.zeros(n_ctrl, np.bool_)
    total = 0
    for phase in range(eps_seq.shape[0]):
        eps = eps_seq[phase]
        for i in range(n):
            cnt[i] = 0
            curp[i] = p[i]
        head = 0
        tail = 0
        for b in range(nb):
            a = assign[b]
            if a >= 0:  # still ε-satisfied at the new ε, with slots at their cell's price? then it stays
                c = b // pieces
                w1, i1, w2, cost = _best_two(C, bidders[c], c, curp, shield, lst, lst_cost, bound, has_list, topv, topi)
                if C[bidders[c], a] + p[a] <= w1 + eps:
                    held_p[off[a] + cnt[a]] = p[a]
                    held_b[off[a] + cnt[a]] = b
                    cnt[a] += 1
                    continue
                assign[b] = -1
            queue[tail] = b
            tail += 1
        n_queued = tail
        n_bids = 0
        while n_queued > 0:
            b = queue[head]
            head += 1
            if head == size:
                head = 0
            n_queued -= 1
            c = b // pieces
            w1, i1, w2, cost = _best_two(C, bidders[c], c, curp, shield, lst, lst_cost, bound, has_list, topv, topi)
            o = off[i1]
            k_cap = cap[i1]
            k_cnt = cnt[i1]
            # price of the second-cheapest slot of the chosen cell: the unit could take that one too
            # (each cell's bids form a min-heap: the lowest at o, the second lowest at o + 1 or o + 2)
            if k_cap - k_cnt >= 2:
                s2 = p[i1]
            elif k_cap - k_cnt == 1:
                s2 = held_p[o] if k_cnt > 0 else np.inf
            elif k_cap >= 3:
                s2 = min(held_p[o + 1], held_p[o + 2])
            else:
                s2 = held_p[o + 1] if k_cap == 2 else np.inf
            if cost + s2 < w2:
                w2 = cost + s2
            bid = w2 - cost + eps
            assign[b] = i1
            if k_cnt < k_cap:  # a free slot: push onto the heap
                k = k_cnt
                while k > 0:
                    parent = (k - 1) >> 1
                    if held_p[o + parent] <= bid:
                        break
                    held_p[o + k] = held_p[o + parent]
                    held_b[o + k] = held_b[o + parent]
                    k = parent
                held_p[o + k] = bid
                held_b[o + k] = b
                cnt[i1] = k_cnt + 1
            else:  # full: the lowest bid is evicted, the new one sifts down from the root
                evicted = held_b[o]
                assign[evicted] = -1
                queue[tail] = evicted
                tail += 1
                if tail == size:
                    tail = 0
                n_queued += 1
                k = 0
                while True:
                    child = 2 * k + 1
                    if child >= k_cap:
                        break
                    if child + 1 < k_cap and held_p[o + child + 1] < held_p[o + child]:
                        child += 1
                    if held_p[o + child] >= bid:
                        break
                    held_p[o + k] = held_p[o + child]
                    held_b[o + k] = held_b[o + child]
                    k = child
                held_p[o + k] = bid
                held_b[o + k] = b
            if cnt[i1] == k_cap:
                curp[i1] = held_p[o]
            n_bids += 1
            if n_bids > max_bids:
                for i in range(n):
                    p[i] = curp[i]
                return -1
        total += n_bids
        for i in range(n):
            p[i] = held_p[off[i]]  # every cell is full: its lowest bid
    return total


@_jit
def _candidates(C, p, k_cand):  # pragma: no cover - compiled
    """Per control: its ``k_cand`` cheapest cells by ``C + p``, the minimum and the gap to the runner-up."""
    m = C.shape[0]
    k_top = max(k_cand, 2)
    cand = np.empty((m, k_cand), np.int64)
    best = np.empty(m, np.float64)
    margin = np.empty(m, np.float64)
    topv = np.empty(k_top, np.float64)
    topi = np.empty(k_top, np.int64)
    for j in range(m):
        _cheapest(C, j, p, topv, topi)
        for k in range(k_cand):
            cand[j, k] = topi[k]
        best[j] = topv[0]
        margin[j] = topv[1] - topv[0]
    return cand, best, margin


@_jit
def _certificate(C, u, v, tol, k_add):  # pragma: no cover - compiled
    """Smallest reduced cost ``C[j, i] - u[i] - v[j]`` and, per control, its ``k_add`` most violated cells.

    Returns ``(worst, n_violating, r_min)``: ``worst[j]`` lists cells with reduced cost below
    ``-tol`` (most negative first, ``-1`` padded).
    """
    m, n = C.shape
    worst = np.full((m, k_add), -1, np.int64)
    topv = np.empty(k_add, np.float64)
    topi = np.empty(k_add, np.int64)
    minus_u = -u
    r_min = np.inf
    n_violating = 0
    for j in range(m):
        row_min = np.inf
        for i in range(n):  # a plain minimum, which the compiler vectorises: the common, violation-free case
            r = C[j, i] - u[i]
            row_min = min(row_min, r)
        row_min -= v[j]
        r_min = min(r_min, row_min)
        if row_min >= -tol:
            continue
        n_violating += 1
        _cheapest(C, j, minus_u, topv, topi)  # the k_add smallest C[j, i] - u[i], ascending
        for k in range(k_add):
            if topv[k] - v[j] < -tol:
                worst[j, k] = topi[k]
    return worst, n_violating, r_min


@_jit
def finish_costs(C, control_sq, cell_sq):  # pragma: no cover - compiled
    """``C = max(-2 C + |y_j|² + |x_i|², 0)`` in place, in one pass (``C`` holds the products ``y_j·x_i``)."""
    m, n = C.shape
    for j in range(m):
        cj = control_sq[j]
        for i in range(n):
            C[j, i] = max(C[j, i] * -2.0 + cj + cell_sq[i], 0.0)


# --------------------------------------------------------------------------------------------
# POT's network simplex: dense, sparse (public), sparse warm-started (private, feature-detected)
# --------------------------------------------------------------------------------------------


class NotConvergedError(RuntimeError):
    """The network simplex stopped at its iteration limit before optimality."""

    def __init__(self, num_iter: int) -> None:
        super().__init__(f"the network simplex reached its iteration limit ({num_iter}) before optimality")
        self.num_iter = num_iter


@functools.cache
def private_sparse_solver():
    """POT's compiled sparse network simplex with a dual warm start (POT >= 0.9.7), or ``None``.

    The function is private to POT, so it is probed on a 2 × 2 problem once per process: any
    change of its name, signature or outputs makes pertgrn use the public ``ot.emd`` instead.
    """
    try:
        from ot.lp.emd_wrap import emd_c_sparse
    except ImportError:  # pragma: no cover - depends on the installed POT
        return None
    a = np.array([0.5, 0.5])
    src = np.array([0, 0, 1, 1], dtype=np.uint64)
    tgt = np.array([0, 1, 0, 1], dtype=np.uint64)
    cost = np.array([0.0, 1.0, 1.0, 0.0])
    try:
        out = emd_c_sparse(a, a.copy(), src, tgt, cost, 1000, np.zeros(2), np.zeros(2))
        fs, ft, fv, total, alpha, beta, code = out
        ok = code == 1 and abs(total) < 1e-12 and np.asarray(alpha).shape == (2,) and np.asarray(fv).sum() == 1.0
    except Exception as err:  # any failure means "not usable"  # pragma: no cover
        logger.debug("ot_pairing: POT's warm-started sparse solver is not usable (%s).", err)
        return None
    return emd_c_sparse if ok else None


def _check_code(code: int, num_iter: int) -> None:
    """Raise on an iteration limit, with POT's own warning (as the public ``ot.emd`` gives it)."""
    if code == 3:
        from ot.lp.emd_wrap import check_result

        check_result(code)
        raise NotConvergedError(num_iter)


def _sparse_solve(
    a: np.ndarray,
    b: np.ndarray,
    src: np.ndarray,
    tgt: np.ndarray,
    cost: np.ndarray,
    num_iter: int,
    warm: tuple[np.ndarray, np.ndarray] | None,
    use_private: bool,
):
    """Network simplex on a sparse bipartite graph: ``(source, target, flow, u, v, code)``."""
    solver = private_sparse_solver() if use_private else None
    if solver is not None:
        alpha0, beta0 = (None, None) if warm is None else (np.ascontiguousarray(warm[0]), np.ascontiguousarray(warm[1]))
        fs, ft, fv, _, u, v, code = solver(
            a, b, src.astype(np.uint64), tgt.astype(np.uint64), cost, num_iter, alpha0, beta0
        )
        return fs.astype(np.int64), ft.astype(np.int64), fv, u, v, int(code)
    import ot
    from scipy.sparse import coo_array

    M = coo_array((cost, (src, tgt)), shape=(a.size, b.size))
    with warnings.catch_warnings():  # an infeasible restricted problem is expected and handled; see _check_code
        warnings.simplefilter("ignore")
        G, log = ot.emd(a, b, M, numItermax=num_iter, log=True, check_marginals=False)
    code = int(log["result_code"])
    if code != 1:
        return None, None, None, None, None, code
    G = G.tocoo() if hasattr(G, "tocoo") else G
    return (
        np.asarray(G.row, dtype=np.int64),
        np.asarray(G.col, dtype=np.int64),
        np.asarray(G.data, dtype=np.float64),
        np.asarray(log["u"], dtype=np.float64),
        np.asarray(log["v"], dtype=np.float64),
        code,
    )


def dense_transport(C: np.ndarray, num_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact plan by POT's dense network simplex on all ``m × n`` arcs: ``(control, cell, mass)``."""
    import ot

    m, n = C.shape
    G, log = ot.emd(np.full(m, 1.0 / m), np.full(n, 1.0 / n), C, numItermax=num_iter, log=True)
    if log["result_code"] != 1:
        raise NotConvergedError(num_iter)
    ctrl, cell = np.nonzero(G)
    return ctrl, cell, G[ctrl, cell]


# --------------------------------------------------------------------------------------------
# the certified solver
# --------------------------------------------------------------------------------------------


def cost_scale(C: np.ndarray) -> float:
    """Median of a strided sample of the costs (the unit of the auction and the tolerances)."""
    flat = C.ravel()
    sample = flat[:: max(1, flat.size // 50_000)]
    scale = float(np.median(sample))
    if not scale > 0:
        scale = float(flat.max())
    return scale


def _eps_schedule(scale: float) -> np.ndarray:
    eps, k = [], 0
    while True:
        e = max(EPS_START * scale / EPS_FACTOR**k, EPS_FINAL * scale)
        eps.append(e)
        if e <= EPS_FINAL * scale:
            return np.asarray(eps, dtype=np.float64)
        k += 1


def auction_prices(C: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """Approximate dual prices of the cells (``≈ -u``) and the number of bids.

    The first :data:`SUBSAMPLE_PHASES` phases of the ε schedule run on one in :data:`SUBSAMPLE`
    controls (fewer when the subsample would hold under ``4 n`` controls); the full problem then
    repeats the last of them and runs the rest. The subsample is stratified by each control's
    nearest cell (:func:`_stratified_subsample`).
    """
    m, n = C.shape
    eps = _eps_schedule(scale)
    p = np.zeros(n)
    step = SUBSAMPLE
    while step > 1 and math.ceil(m / step) < 4 * n:
        step //= 2
    n_coarse = min(SUBSAMPLE_PHASES, eps.size - 1) if step > 1 else 0
    shield = SHIELD if n > 4 * (SHIELD + 1) else 0
    bids = 0
    if n_coarse > 0:
        sub = _stratified_subsample(C, step)
        pieces = max(1, math.ceil(2 * n / sub.size))
        coarse_shield = SHIELD_COARSE if n > 4 * (SHIELD_COARSE + 1) else 0
        done = _auction(C, sub, pieces, eps[:n_coarse], p, coarse_shield, MAX_BIDS_PER_BIDDER * sub.size * pieces)
        bids += max(done, 0)
    everyone = np.arange(m, dtype=np.int64)
    pieces = max(1, math.ceil(2 * n / m))
    done = _auction(C, everyone, pieces, eps[max(n_coarse - 1, 0) :], p, shield, MAX_BIDS_PER_BIDDER * m * pieces)
    if done < 0:
        logger.debug("ot_pairing: the auction hit its bid limit; its prices are used as they are.")
    return p, bids + max(done, 0)


def _stratified_subsample(C: np.ndarray, step: int) -> np.ndarray:
    """One in ``step`` controls, sorted by nearest cell and then by distance to it (indices ascending).

    A plain one-in-``step`` sample gives some groups of cells (a cell state, say) more or fewer
    controls than their share; their prices then come out of the coarse phases too high or too low
    as a block, and the first phase on all controls spends most of its bids moving them back (up
    to twice the bids of a whole solve, measured on Norman-scale problems). Taking every
    ``step``-th control in the order of nearest cell keeps each cell's neighbourhood at its share;
    on Norman-scale problems it cut that phase's bids by a quarter on average. It does not remove
    every such block: how far a block's prices may move depends on the few controls between it and
    the rest, which no subsample reproduces exactly.
    """
    m = C.shape[0]
    nearest = C.argmin(axis=1)
    order = np.lexsort((C[np.arange(m), nearest], nearest))
    return np.sort(order[::step]).astype(np.int64)


def _fix_controls(best_cell: np.ndarray, margin: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Controls assigned to their best cell outright: clear margin, at most ``(m - 1) // n`` per cell."""
    m = best_cell.size
    fixed = np.zeros(m, dtype=bool)
    per_cell = (m - 1) // n
    if per_cell == 0:
        return fixed
    sure = np.flatnonzero(margin > threshold)
    if sure.size == 0:
        return fixed
    order = sure[np.lexsort((sure, -margin[sure], best_cell[sure]))]  # by cell, then largest margin first
    cells = best_cell[order]
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
    rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    fixed[order[rank < per_cell]] = True
    return fixed


def _backbone(supply_units: np.ndarray, free: np.ndarray, n: int, cell_key: np.ndarray, control_key: np.ndarray):
    """Arcs ``(control, cell)`` of a north-west-corner plan of the restricted problem (always feasible).

    Supplies and demands are integers in units of ``1 / (n m)``: cell ``i`` has ``supply_units[i]``,
    each free control ``n``. Both sides are sorted by ``*_key`` so that the plan pairs similar cells.
    """
    order_i = np.argsort(cell_key, kind="stable")
    order_j = free[np.argsort(control_key[free], kind="stable")]
    cum_i = np.cumsum(supply_units[order_i])
    cuts = np.union1d(np.r_[0, cum_i], np.arange(order_j.size + 1, dtype=np.int64) * n)
    start = cuts[:-1]
    rows = np.searchsorted(cum_i, start, side="right")
    cols = start // n
    return order_j[cols], order_i[rows]


def certified_transport(
    C: np.ndarray,
    *,
    num_iter: int,
    cells: np.ndarray | None = None,
    controls: np.ndarray | None = None,
    warm_start: bool | None = None,
    max_rounds: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Exact optimal transport between uniform controls (rows of ``C``) and uniform cells (columns).

    Parameters
    ----------
    C
        ``m × n`` float64 costs, controls × cells, finite and non-negative.
    num_iter
        Iteration limit of each network-simplex solve.
    cells, controls
        Coordinates (``n × d``, ``m × d``), used only to order the feasibility backbone.
    warm_start
        Use POT's private warm-started sparse solver: ``None`` when available, ``False`` never.
    max_rounds
        Certificate rounds before the dense fallback (default :data:`MAX_ROUNDS`).

    Returns
    -------
    ``(control, cell, mass, stats)``: the plan's nonzero entries (total mass 1; row sums ``1/m``,
    column sums ``1/n``) and a dict describing the solve (``rounds``, ``n_arcs``, ``n_fixed``,
    ``r_min``, ``tol``, ``cost``, ``warm_start``, ``backbone``, ``fallback``).
    """
    C = np.ascontiguousarray(C, dtype=np.float64)
    m, n = C.shape
    max_rounds = MAX_ROUNDS if max_rounds is None else max_rounds
    use_private = warm_start is not False and private_sparse_solver() is not None
    stats: dict[str, Any] = {
        "rounds": 0,
        "warm_start": use_private,
        "backbone": False,
        "fallback": False,
        "bids": 0,
        "n_arcs": 0,
        "n_fixed": 0,
        "r_min": np.nan,
        "tol": np.nan,
        "cost": np.nan,
    }
    if n == 1 or m == 1:  # a single cell (control) takes everything
        ctrl, cell = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
        mass = np.full(m * n, 1.0 / (m * n))
        stats.update(n_arcs=m * n, n_fixed=0, r_min=0.0, tol=0.0, cost=float(C.mean()))
        return ctrl.ravel(), cell.ravel(), mass, stats
    scale = cost_scale(C)
    if scale == 0.0:  # every cost is zero: any coupling is optimal
        supply = np.full(n, m, dtype=np.int64)
        ctrl, cell = _backbone(supply, np.arange(m), n, np.arange(n), np.arange(m))
        mass = _nw_mass(supply, ctrl, cell, n, m)
        stats.update(n_arcs=0, n_fixed=0, r_min=0.0, tol=0.0, cost=0.0)
        return ctrl, cell, mass, stats

    p, stats["bids"] = auction_prices(C, scale)
    # a control spreads over at least n / m cells: with fewer controls than cells it needs more arcs
    k_cand = min(N_CANDIDATES - 1 + math.ceil(n / m), n)
    cand, beta, margin = _candidates(C, p, k_cand)
    best_cell = cand[:, 0].copy()
    fixed = _fix_controls(best_cell, margin, n, FIX_MARGIN * scale)
    # candidate arcs (control, cell): distinct by construction; `_add_arcs` keeps them so
    arcs_j = np.repeat(np.arange(m, dtype=np.int64), k_cand)
    arcs_i = cand.ravel()
    if cells is not None and controls is not None:
        direction = cells.mean(axis=0) - controls.mean(axis=0)
        cell_key, control_key = cells @ direction, controls @ direction
    else:
        cell_key, control_key = -p, beta
    u0, v0 = -p, beta
    backbone_added = False
    k_add = min(N_ADDED - 1 + math.ceil(n / m), n)
    for _ in range(max_rounds):
        stats["rounds"] += 1
        free = np.flatnonzero(~fixed)
        local = np.full(m, -1, dtype=np.int64)
        local[free] = np.arange(free.size)
        n_fixed_on = np.bincount(best_cell[fixed], minlength=n)
        supply_units = m - n * n_fixed_on
        a = supply_units / (n * m)
        b = np.full(free.size, 1.0 / m)
        keep = local[arcs_j] >= 0
        arc_j, arc_i = arcs_j[keep], arcs_i[keep]
        fs, ft, fv, u, v_free, code = _sparse_solve(
            a, b, arc_i, local[arc_j], C[arc_j, arc_i], num_iter, (u0, v0[free]), use_private
        )
        _check_code(code, num_iter)
        if code != 1:  # infeasible on these arcs: add a backbone that makes it feasible, then unfix all
            if backbone_added:
                fixed[:] = False
                free = np.arange(m)
                supply_units = np.full(n, m, dtype=np.int64)
            bj, bi = _backbone(supply_units, free, n, cell_key, control_key)
            arcs_j, arcs_i = _add_arcs(arcs_j, arcs_i, bj, bi, C.shape)
            backbone_added = stats["backbone"] = True
            continue
        v = np.empty(m)
        v[free] = v_free
        fixed_idx = np.flatnonzero(fixed)
        v[fixed_idx] = C[fixed_idx, best_cell[fixed_idx]] - u[best_cell[fixed_idx]]
        ctrl = np.concatenate([free[ft], fixed_idx])
        cell = np.concatenate([fs, best_cell[fixed_idx]])
        mass = np.concatenate([fv, np.full(fixed_idx.size, 1.0 / m)])
        cost = float(np.dot(mass, C[ctrl, cell]))
        tol = RELATIVE_TOL * max(cost, 0.0) + SCALE_TOL * scale
        worst, n_violating, r_min = _certificate(C, u, v, tol, k_add)
        stats.update(n_arcs=int(arcs_j.size), n_fixed=int(fixed_idx.size), r_min=float(r_min), tol=tol, cost=cost)
        if n_violating == 0:
            return ctrl, cell, mass, stats
        bad = np.flatnonzero(worst[:, 0] >= 0)
        new = worst[bad]
        new_j = np.repeat(bad, k_add)[new.ravel() >= 0]
        arcs_j, arcs_i = _add_arcs(arcs_j, arcs_i, new_j, new.ravel()[new.ravel() >= 0], C.shape)
        fixed[bad] = False
        u0, v0 = u, v
    logger.warning(
        "ot_pairing: the sparse solver's certificate did not close after %d rounds (%d cells × %d controls); "
        "solving this condition with the dense network simplex instead.",
        max_rounds,
        n,
        m,
    )
    stats["fallback"] = True
    ctrl, cell, mass = dense_transport(C, num_iter)
    stats["cost"] = float(np.dot(mass, C[ctrl, cell]))
    return ctrl, cell, mass, stats


def _add_arcs(arcs_j, arcs_i, new_j, new_i, shape):
    """The arc lists with the new arcs ``(new_j, new_i)`` appended, each arc once."""
    present = np.zeros(shape, dtype=bool)
    present[arcs_j, arcs_i] = True
    keep = ~present[new_j, new_i]
    new_j, new_i = new_j[keep], new_i[keep]
    first = np.unique(new_j * shape[1] + new_i, return_index=True)[1]  # duplicates among the new ones
    return np.concatenate([arcs_j, new_j[first]]), np.concatenate([arcs_i, new_i[first]])


def _nw_mass(supply_units: np.ndarray, ctrl: np.ndarray, cell: np.ndarray, n: int, m: int) -> np.ndarray:
    """Masses of the north-west-corner plan whose arcs :func:`_backbone` returned (all nodes in index order)."""
    cum_i = np.cumsum(supply_units)
    cuts = np.union1d(np.r_[0, cum_i], np.arange(m + 1, dtype=np.int64) * n)
    return np.diff(cuts).astype(np.float64) / (n * m)
