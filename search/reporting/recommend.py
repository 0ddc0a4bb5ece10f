"""Which network to deploy: one recommendation per device key, and the accuracy floor.

``recommend(results, objectives, dataset=...)`` answers, for every device key the run measured
on, the MENNDL question: the cheapest network (by that device's first cost objective, then the
other costs) whose accuracy lies within ``tolerance_points`` of the most accurate one, and how
many times cheaper it is in every cost. Candidates at or below the *floor* (chance level,
``1 / num_classes``, plus ``margin_points``) are never recommended, plotted as front members or
exported by default: a network that guesses is not a trade-off.

The accuracy it compares is the test accuracy where the results have one for candidates (after
the search, :mod:`search.training` may evaluate them on the test split), else the validation
accuracy the search selected on; :class:`Recommendation` says which, and the split's size, so a
tolerance of one point is also given in images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from search.metrics import DEVICE_METRICS
from search.objectives import Objective, split_metric
from search.provenance import num

#: accuracy points above chance below which a candidate counts as chance-level
DEFAULT_MARGIN_POINTS = 10.0
#: accuracy points from the most accurate network within which the cheapest is recommended
DEFAULT_TOLERANCE_POINTS = 1.0
#: a saving smaller than this factor is reported as "no real saving"
REAL_SAVING = 1.5


def held_out_accuracy(c: dict[str, Any]) -> float | None:
    """The candidate's test-split accuracy, if the results carry one."""
    v = num(c.get("test_accuracy"))
    return v if v is not None else num((c.get("train") or {}).get("test_accuracy"))


def accuracy_floor(num_classes: int | None, margin_points: float = DEFAULT_MARGIN_POINTS) -> float:
    """Chance level plus ``margin_points`` (as a 0..1 fraction); 0 when the class count is unknown."""
    if not num_classes or num_classes < 2:
        return 0.0
    return 1.0 / num_classes + margin_points / 100.0


def unstable_count(results: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """``(unstable, total)`` successful measurements (``unstable``: the agent's flag that its
    timed runs drifted more than its stability limit)."""
    ms = [m for c in results for m in c.get("measurements") or [] if not m.get("error")]
    return sum("unstable" in (m.get("flags") or ()) for m in ms), len(ms)


def latency_spread(c: dict[str, Any], key: str | None) -> tuple[float, float, float] | None:
    """``(min, median, p90)`` of the candidate's timed runs on ``key`` (ms), if measured."""
    for m in c.get("measurements") or []:
        if m.get("error") or (key is not None and m.get("device_key") != key):
            continue
        lat = m.get("latency_ms") or {}
        vals = [num(lat.get(k)) for k in ("min", "median", "p90")]
        if all(v is not None for v in vals):
            return vals[0], vals[1], vals[2]  # type: ignore[return-value]
    return None


@dataclass(frozen=True)
class Recommendation:
    """The answer for one device key (``None``: no device-bound objective)."""

    device_key: str | None
    basis: str  # "test" | "validation"
    eval_images: int | None  # size of the split the accuracies are measured on
    tolerance_points: float
    floor: float
    best: dict[str, Any] | None = None
    chosen: dict[str, Any] | None = None
    best_accuracy: float | None = None
    chosen_accuracy: float | None = None
    primary_cost: str | None = None
    #: cost name -> (best's value, chosen's value, times cheaper)
    savings: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: ids of every candidate with the best accuracy (ties: ``best`` is the first found)
    tied_best: tuple[int, ...] = ()
    eligible: int = 0
    below_floor: int = 0
    #: True when the chosen network's p90 latency reaches the best's median (overlapping spreads)
    latency_within_noise: bool = False

    @property
    def tolerance_images(self) -> float | None:
        """The tolerance in images of the split the accuracies come from."""
        return None if self.eval_images is None else self.tolerance_points / 100.0 * self.eval_images

    @property
    def best_saving(self) -> float:
        """The largest times-cheaper factor over the costs (1.0 when the chosen is the best)."""
        return max((r for _, _, r in self.savings.values()), default=1.0)

    @property
    def real_saving(self) -> bool:
        """Whether the chosen network is at least :data:`REAL_SAVING` times cheaper in a cost."""
        return self.chosen is not None and self.best is not None and self.chosen["id"] != self.best["id"] \
            and self.best_saving >= REAL_SAVING


def _accuracy_getter(results: Sequence[dict[str, Any]], acc_name: str) -> tuple[str, Any]:
    if any(held_out_accuracy(c) is not None for c in results if c.get("status") == "done"):
        return "test", held_out_accuracy
    return "validation", lambda c: num((c.get("objectives") or {}).get(acc_name))


def device_keys(objectives: Sequence[Objective]) -> list[str | None]:
    """The device keys the objectives are bound to, in order (``[None]`` when there are none)."""
    keys: list[str | None] = []
    for o in objectives:
        metric, key = split_metric(o.name)
        if metric in DEVICE_METRICS and key not in keys:
            keys.append(key)
    return keys or [None]


def recommend(results: Sequence[dict[str, Any]], objectives: Sequence[Objective], *,
              dataset: dict[str, Any] | None = None,
              tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
              margin_points: float = DEFAULT_MARGIN_POINTS) -> list[Recommendation]:
    """One :class:`Recommendation` per device key (see the module docstring).

    dataset: the run's dataset record (``num_classes`` and split sizes ``val``/``test``), as
    :func:`search.loop.setup.describe_source` stores it; without it there is no floor.
    """
    dataset = dataset or {}
    acc_o = next((o for o in objectives if o.metric == "accuracy"), objectives[0])
    basis, acc_of = _accuracy_getter(results, acc_o.name)
    floor = accuracy_floor(dataset.get("num_classes"), margin_points)
    eval_images = dataset.get("test" if basis == "test" else "val")
    done = [c for c in results if c.get("status") == "done" and c.get("feasible", True)
            and acc_of(c) is not None]
    above = [c for c in done if acc_of(c) > floor]
    out = []
    for key in device_keys(objectives):
        costs = [o.name for o in objectives if o is not acc_o and split_metric(o.name)[1] in (key, None)]
        common = dict(device_key=key, basis=basis, eval_images=eval_images, tolerance_points=tolerance_points,
                      floor=floor, below_floor=len(done) - len(above))
        pool = [c for c in above if costs and all(num(c["objectives"].get(n)) is not None for n in costs)]
        if not pool:
            out.append(Recommendation(**common))
            continue
        best = max(pool, key=lambda c: (acc_of(c), -c["id"]))
        near = [c for c in pool if (acc_of(best) - acc_of(c)) * 100.0 <= tolerance_points + 1e-9]
        chosen = min(near, key=lambda c: (*(float(c["objectives"][n]) for n in costs), -acc_of(c), c["id"]))
        savings = {}
        for n in costs:
            b, v = float(best["objectives"][n]), float(chosen["objectives"][n])
            savings[n] = (b, v, b / v if v > 0 else 1.0)
        within_noise = False
        lat_name = next((n for n in costs if split_metric(n)[0] == "latency_ms"), None)
        if lat_name and chosen is not best:
            sb, sc = latency_spread(best, key), latency_spread(chosen, key)
            within_noise = bool(sb and sc and sc[2] >= sb[1])  # chosen's p90 reaches best's median
        out.append(Recommendation(**common, best=best, chosen=chosen, best_accuracy=acc_of(best),
                                  chosen_accuracy=acc_of(chosen), primary_cost=costs[0], savings=savings,
                                  eligible=len(pool), latency_within_noise=within_noise,
                                  tied_best=tuple(c["id"] for c in pool if acc_of(c) == acc_of(best))))
    return out
