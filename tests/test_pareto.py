"""search.pareto against brute-force definitions and hand-computed values."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from search.objectives import Objective
from search.pareto import (
    constrained_ranks,
    crowding_distance,
    hypervolume,
    minimization_matrix,
    nondominated_ranks,
    normalize,
    pareto_mask,
    pareto_members,
    rank_and_crowding,
)


def dominates(a, b) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def brute_ranks(F, cv=None) -> np.ndarray:
    """Non-dominated sorting by peeling fronts, under (constrained) domination."""
    n = len(F)
    cv = np.zeros(n) if cv is None else np.asarray(cv)

    def cdom(i, j):
        if cv[i] == 0 and cv[j] > 0:
            return True
        if cv[i] > 0 or cv[j] > 0:
            return cv[i] > 0 and cv[j] > 0 and cv[i] < cv[j]
        return dominates(F[i], F[j])

    ranks = np.full(n, -1)
    left, r = set(range(n)), 0
    while left:
        front = {i for i in left if not any(cdom(j, i) for j in left if j != i)}
        for i in front:
            ranks[i] = r
        left -= front
        r += 1
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_ranks_and_mask_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    F = rng.integers(0, 6, size=(40, 3)).astype(float)  # small integers: ties and duplicates
    ranks = nondominated_ranks(F)
    assert np.array_equal(ranks, brute_ranks(F))
    assert np.array_equal(pareto_mask(F), ranks == 0)


def test_pareto_mask_keeps_duplicates_and_handles_empty():
    F = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    assert pareto_mask(F).tolist() == [True, True, True, False]
    assert pareto_mask(np.zeros((0, 2))).shape == (0,)
    assert nondominated_ranks(np.zeros((0, 2))).shape == (0,)


def test_bad_matrices_are_rejected():
    with pytest.raises(ValueError):
        pareto_mask([1.0, 2.0])
    with pytest.raises(ValueError):
        nondominated_ranks([[1.0, np.nan]])


@pytest.mark.parametrize("seed", range(3))
def test_constrained_ranks_match_constrained_domination(seed):
    rng = np.random.default_rng(seed)
    F = rng.integers(0, 5, size=(30, 2)).astype(float)
    cv = np.where(rng.random(30) < 0.4, rng.integers(1, 4, size=30).astype(float), 0.0)
    assert np.array_equal(constrained_ranks(F, cv), brute_ranks(F, cv))


def test_feasible_beats_infeasible_whatever_the_objectives():
    F = np.array([[10.0, 10.0], [0.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    cv = np.array([0.0, 2.0, 1.0, np.inf])
    ranks = constrained_ranks(F, cv)
    assert ranks.tolist() == [0, 2, 1, 3]
    with pytest.raises(ValueError):
        constrained_ranks(F, [0.0, -1.0, 0.0, 0.0])


def test_crowding_distance_by_hand():
    F = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    cd = crowding_distance(F)
    assert np.isinf(cd[0]) and np.isinf(cd[3])
    # Deb's definition, each objective normalised by its range (4), averaged over 2 objectives
    # as pymoo does: point 1: (3-0)/4 + (4-1)/4 = 1.5 -> 0.75; point 2: (4-1)/4 + (2-0)/4 -> 0.625
    assert cd[1] == pytest.approx(0.75)
    assert cd[2] == pytest.approx(0.625)
    assert np.isinf(crowding_distance(F[:2])).all()


def test_rank_and_crowding_orders_survival():
    F = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0], [4.0, 4.0]])
    ranks, crowd = rank_and_crowding(F)
    assert ranks.tolist() == [0, 0, 0, 0, 1]
    assert np.isinf(crowd[4])  # alone on its front


def test_hypervolume_by_hand_and_against_pymoo():
    assert hypervolume([[0.5, 0.5]], [1.0, 1.0]) == pytest.approx(0.25)
    # union of two 0.5 x 1 boxes overlapping in a 0.5 x 0.5 square: 0.5 + 0.5 - 0.25
    assert hypervolume([[0.5, 0.0], [0.0, 0.5]], [1.0, 1.0]) == pytest.approx(0.75)
    assert hypervolume([[2.0, 0.0]], [1.0, 1.0]) == 0.0  # outside the reference: nothing
    assert hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0
    from pymoo.indicators.hv import HV

    rng = np.random.default_rng(0)
    F = rng.random((50, 3))
    ref = np.array([1.1, 1.1, 1.1])
    assert hypervolume(F, ref) == pytest.approx(float(HV(ref_point=ref)(F)), rel=1e-12)
    with pytest.raises(ValueError):
        hypervolume(F, [1.0, 1.0])


def test_minimization_matrix_and_members():
    objs = [Objective("accuracy", "max"), Objective("latency_ms@gpu", "min")]
    vals = [{"accuracy": 0.9, "latency_ms@gpu": 5.0}, None, {"accuracy": 0.8, "latency_ms@gpu": 1.0},
            {"accuracy": 0.95, "latency_ms@gpu": 0.5}, {"accuracy": 0.7, "latency_ms@gpu": 2.0}]
    F = minimization_matrix([vals[0], vals[2]], objs)
    assert F.tolist() == [[-0.9, 5.0], [-0.8, 1.0]]
    with pytest.raises(KeyError, match="latency_ms@gpu"):
        minimization_matrix([{"accuracy": 1.0}], objs)
    assert pareto_members(vals, objs).tolist() == [False, False, False, True, False]
    # the dominating row is infeasible: the others that it alone dominated become members
    members = pareto_members(vals, objs, feasible=[True, True, True, False, True])
    assert members.tolist() == [True, False, True, False, False]


def test_normalize():
    F = np.array([[1.0, 10.0], [3.0, 30.0]])
    assert normalize(F, [1.0, 10.0], [3.0, 30.0]).tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert normalize(F, [1.0, 10.0], [1.0, 30.0])[:, 0].tolist() == [0.0, 2.0]  # zero range kept


def test_ranks_are_permutation_invariant():
    rng = np.random.default_rng(7)
    F = rng.random((25, 2))
    perm = rng.permutation(25)
    assert np.array_equal(nondominated_ranks(F)[perm], nondominated_ranks(F[perm]))
    for a, b in itertools.combinations(range(25), 2):
        if dominates(F[a], F[b]):
            assert nondominated_ranks(F)[a] < nondominated_ranks(F)[b]


@pytest.mark.parametrize("seed", range(4))
def test_crowding_distance_equals_pymoo_to_the_last_bit(seed):
    """search.pareto's numpy crowding replaces pymoo's on the hot path: it must give the same
    floats (NSGA-II's tournaments and survival compare them), ties, duplicates and constant
    objectives included."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

    rng = np.random.default_rng(seed)
    for trial in range(300):
        n, m = int(rng.integers(3, 50)), int(rng.integers(1, 5))
        if trial % 3 == 0:
            F = rng.integers(0, 4, size=(n, m)).astype(float)  # many ties and duplicate rows
        else:
            F = rng.normal(size=(n, m)) * 10.0 ** rng.integers(-3, 4)
        if trial % 7 == 0:
            F[:, rng.integers(m)] = 0.5  # a constant objective
        ours = crowding_distance(F)
        ref = calc_crowding_distance(F.copy())
        assert np.array_equal(ours, ref), (F, ours, ref)
        assert np.array_equal(crowding_distance(F.tolist()), ref)
