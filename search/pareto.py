"""Pareto utilities on a minimisation matrix: ranks, masks, crowding, hypervolume.

Every function takes ``F`` with one row per point and one column per objective, all to be
*minimised* (use :func:`minimization_matrix` to turn value dicts and :class:`Objective` s into
one). Non-dominated sorting, the non-dominated mask and the hypervolume come from ``moocore``;
the crowding distance (Deb et al. 2002) is pymoo's ``calc_crowding_distance`` rewritten here in
numpy, tested bit-for-bit equal to it (``tests/test_pareto.py``), because importing pymoo costs
the search server about 0.35 s of CPU. Constraint domination (Deb 2000:
a feasible point beats an infeasible one, two infeasible points compare by total violation)
is built on top in :func:`constrained_ranks`.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import moocore
import numpy as np

from search.objectives import Objective


def _as_matrix(F: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    arr = np.asarray(F, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D objective matrix, got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError("objective matrix contains NaN or infinite values")
    return arr


def nondominated_ranks(F: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Pareto rank of every row (0 = non-dominated front, 1 = next front, ...).

    Equal rows share a rank.
    """
    arr = _as_matrix(F)
    if len(arr) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(moocore.pareto_rank(arr), dtype=int)


def pareto_mask(F: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (duplicates of a member all kept)."""
    arr = _as_matrix(F)
    if len(arr) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(arr, keep_weakly=True), dtype=bool)


def crowding_distance(F: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of every row, computed over all rows given (pass one front).

    Boundary points and sets of at most two points get ``inf``. Each objective's gap between
    the two neighbours is normalised by the objective's range (an objective where all rows are
    equal adds 0) and the sum is divided by the number of objectives, as pymoo does.

    The same arithmetic as pymoo 0.6's ``calc_crowding_distance`` in the same order, so the
    result is equal to the last bit (``tests/test_pareto.py`` checks it against pymoo on random
    fronts with ties and constant columns). Measured on this project's shared 2-CPU machine
    (``timeit``, best of 7 x 2,000 calls on a 32 x 2 front given as a list, as NSGA-II does):
    45 us per call instead of 63 us through pymoo, and no pymoo import (0.33 s of CPU once per
    server process, which the dispatcher benchmark ``bench/fleet.py`` saw inside its run).
    """
    arr = _as_matrix(F)
    n, m = arr.shape
    if n <= 2:
        return np.full(n, np.inf)
    order = np.argsort(arr, axis=0, kind="mergesort")
    cols = np.arange(m)
    S = arr[order, cols]  # every column sorted
    norm = np.max(S, axis=0) - np.min(S, axis=0)
    norm[norm == 0] = np.nan  # a constant objective: its gaps become NaN, then 0
    gap = np.empty((n + 1, m))
    gap[0] = np.inf
    gap[n] = np.inf
    np.subtract(S[1:], S[:-1], out=gap[1:n])
    to_last, to_next = gap[:-1] / norm, gap[1:] / norm
    to_last[np.isnan(to_last)] = 0.0
    to_next[np.isnan(to_next)] = 0.0
    both = np.empty((n, m))
    both[order, cols] = to_last + to_next  # back to the rows' order
    return np.sum(both, axis=1) / m


def constrained_ranks(
    F: Sequence[Sequence[float]] | np.ndarray, violation: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Ranks under Deb's constraint domination.

    Feasible rows (violation 0) are ranked by non-dominated sorting; every infeasible row ranks
    after all feasible ones, infeasible rows with equal total violation share a rank and lower
    violation ranks better. This is exactly non-dominated sorting under the constrained
    domination relation.
    """
    arr = _as_matrix(F)
    cv = np.asarray(violation, dtype=float)
    if cv.shape != (len(arr),):
        raise ValueError(f"violation has shape {cv.shape}, expected ({len(arr)},)")
    if np.any(np.isnan(cv)) or np.any(cv < 0):
        raise ValueError("violations must be >= 0 (inf allowed)")
    ranks = np.zeros(len(arr), dtype=int)
    feas = cv == 0
    offset = 0
    if feas.any():
        ranks[feas] = nondominated_ranks(arr[feas])
        offset = int(ranks[feas].max()) + 1
    if (~feas).any():
        levels = np.unique(cv[~feas])  # sorted, so dense rank = position
        ranks[~feas] = offset + np.searchsorted(levels, cv[~feas])
    return ranks


def rank_and_crowding(
    F: Sequence[Sequence[float]] | np.ndarray, violation: Sequence[float] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(rank, crowding)`` of every row; crowding is computed within each rank's front.

    Sorting by ``(rank, -crowding)`` gives NSGA-II's survival order (best first).
    """
    arr = _as_matrix(F)
    cv = np.zeros(len(arr)) if violation is None else np.asarray(violation, dtype=float)
    ranks = constrained_ranks(arr, cv)
    crowd = np.zeros(len(arr))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        crowd[idx] = crowding_distance(arr[idx])
    return ranks, crowd


def hypervolume(F: Sequence[Sequence[float]] | np.ndarray, ref: Sequence[float] | np.ndarray) -> float:
    """Hypervolume dominated by the rows of ``F`` and bounded by ``ref`` (minimisation).

    Rows that do not strictly dominate ``ref`` contribute nothing; an empty set has volume 0.
    """
    arr = _as_matrix(F)
    r = np.asarray(ref, dtype=float)
    if r.ndim != 1 or (arr.size and r.shape[0] != arr.shape[1]):
        raise ValueError(f"reference point of shape {r.shape} does not match {arr.shape}")
    if len(arr) == 0:
        return 0.0
    inside = np.all(arr < r, axis=1)
    if not inside.any():
        return 0.0
    return float(moocore.hypervolume(arr[inside], ref=r))


def minimization_matrix(
    values: Iterable[Mapping[str, float]], objectives: Sequence[Objective]
) -> np.ndarray:
    """Rows of objective values (dicts keyed by objective name) as a to-be-minimised matrix.

    Raises ``KeyError`` naming the objective when a dict lacks one.
    """
    rows = []
    for i, v in enumerate(values):
        row = []
        for o in objectives:
            if o.name not in v or v[o.name] is None:
                raise KeyError(f"row {i} has no value for objective {o.name!r}")
            row.append(o.minimized(float(v[o.name])))
        rows.append(row)
    return np.asarray(rows, dtype=float).reshape(len(rows), len(objectives))


def pareto_members(
    values: Sequence[Mapping[str, float] | None],
    objectives: Sequence[Objective],
    feasible: Sequence[bool] | None = None,
) -> np.ndarray:
    """Mask of the Pareto members among ``values``: non-dominated among the rows that are not
    ``None`` and feasible; failed (``None``) and infeasible rows are never members."""
    n = len(values)
    ok = np.array([v is not None for v in values], dtype=bool)
    if feasible is not None:
        if len(feasible) != n:
            raise ValueError("feasible must have one entry per row")
        ok &= np.asarray(feasible, dtype=bool)
    mask = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(ok)
    if len(idx):
        F = minimization_matrix([values[i] for i in idx], objectives)  # type: ignore[misc]
        mask[idx] = pareto_mask(F)
    return mask


def normalize(
    F: np.ndarray, ideal: Sequence[float] | np.ndarray, nadir: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Scale ``F`` so ``ideal`` maps to 0 and ``nadir`` to 1 per objective (a zero range stays
    unscaled)."""
    lo = np.asarray(ideal, dtype=float)
    span = np.asarray(nadir, dtype=float) - lo
    span = np.where(span > 0, span, 1.0)
    return (np.asarray(F, dtype=float) - lo) / span
