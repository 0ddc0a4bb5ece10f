"""Screening before training (issue 12, part 4): rule out candidates a cost model already condemns.

Once a device key's model (:class:`~search.costmodel.fleet.FleetModels`) has a held-out MAPE at
or below ``[predictor].max_heldout_mape_pct``, measured on at least ``[predictor].min_heldout``
held-out networks, each new candidate's *untrained* network is built
and exported (latency does not depend on the weights) and its latency on that key predicted,
with the model's prediction interval. The candidate is screened when

- a constraint is violated over the whole interval (both the interval's ends, and the point
  prediction, are outside the bound), or by an exactly computed number (``params``, ``size_mb``);
- or it is dominated: a finished, feasible candidate is at least as good in every objective
  as the candidate's most optimistic values (latency at the end of the interval that favours it,
  accuracy 1.0, since it is not trained) and better in one. An objective the model cannot
  predict (memory, energy) keeps the candidate in.

A prediction that needs an op type the model never saw (``unseen_op``) is never used to screen;
one with features outside the model's training range (``out_of_range``) is used only with
``[predictor] screen_out_of_range`` (default on: with the first fits, on a dozen networks, most
new candidates have some feature out of range; the audited share measures how wrong that is). A screened candidate is recorded ``screened`` with the prediction and is
neither trained nor measured, except for a fixed share (every ``round(1/audit_share)``-th), which
is trained and measured anyway; the loop logs the prediction error of every candidate that has a
prediction and was measured (``prediction_checked`` events). Predicted numbers carry the model's
label ``estimated:costmodel-<id>`` and are never objective values: only ``done`` candidates,
whose values were measured, enter the front.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from search.costmodel.fleet import FleetModels
from search.objectives import Constraint, Objective, split_metric

#: objective values known exactly before training (computed from the built network)
_COMPUTED = ("params", "size_mb")


@dataclass(frozen=True)
class Verdict:
    """The screening of one candidate: its ``prediction`` (JSON-able), the ``reason`` it is
    screened for (None: not screened) and whether it is trained and measured anyway (``audit``)."""

    prediction: dict[str, Any]
    reason: str | None
    audit: bool = False

    @property
    def screened(self) -> bool:
        """Ruled out and not audited: neither trained nor measured."""
        return self.reason is not None and not self.audit


class Screener:
    """Predicts and judges candidates (runs in a training thread; see the module docstring)."""

    def __init__(self, *, models: FleetModels, space: Any, task: Any, objectives: Sequence[Objective],
                 constraints: Sequence[Constraint], store: Any, max_mape_pct: float, audit_share: float,
                 batch: int = 1, screen: bool = True, screen_out_of_range: bool = True,
                 min_heldout: int = 1) -> None:
        self.models, self.space, self.task, self.store = models, space, task, store
        self.min_heldout = min_heldout
        self.objectives, self.constraints = list(objectives), list(constraints)
        self.max_mape_pct, self.batch, self.screen = max_mape_pct, batch, screen
        self.screen_out_of_range = screen_out_of_range
        self.audit_every = round(1 / audit_share) if audit_share > 0 else 0
        self._lock = threading.Lock()
        self.ruled_out = 0  # candidates with a reason, audited ones included

    def keys(self) -> list[str]:
        """Device keys whose model is good enough to screen with now."""
        keys = {split_metric(i.name)[1] for i in [*self.objectives, *self.constraints]} - {None}
        out = []
        for k in sorted(keys):
            fm = self.models.current(k)
            if fm is not None and fm.heldout_mape_pct <= self.max_mape_pct and fm.n_heldout >= self.min_heldout:
                out.append(k)
        return out

    def predict(self, genome: Any, keys: list[str]) -> dict[str, Any]:
        """Build and export the untrained network; its computed size and predicted latencies."""
        from search.costmodel.features import extract_layers
        from search.training.exporting import count_params, export_onnx

        net = self.space.build(genome, self.task)
        data = export_onnx(net, self.space.input_shape(genome, self.task))
        layers = extract_layers(data, batch=self.batch)
        pred: dict[str, Any] = {"computed": {"params": count_params(net), "size_mb": len(data) / 1e6},
                                "latency_ms": {}}
        for k in keys:
            fm = self.models.current(k)
            r = fm.model.predict_layers(layers)
            pred["latency_ms"][k] = {
                "value": r["latency_ms"], "interval": r["interval_ms"], "label": r["label"],
                "extrapolated": r["extrapolated"],
                "unseen_op": any(": unseen_op:" in x for x in r["extrapolation"]),
                "out_of_range": any(": out_of_range:" in x for x in r["extrapolation"]),
                "heldout_mape_pct": fm.heldout_mape_pct,
                "n_networks": fm.n_networks}
        return pred

    def _range(self, name: str, pred: dict[str, Any]) -> tuple[float, ...] | None:
        """The values ``name`` may take by the prediction (None: unknown before measuring)."""
        metric, key = split_metric(name)
        if metric in _COMPUTED:
            return (float(pred["computed"][metric]),)
        p = pred["latency_ms"].get(key) if metric == "latency_ms" else None
        if p is None or p["unseen_op"] or (p["out_of_range"] and not self.screen_out_of_range):
            return None
        iv = p["interval"]
        return (p["value"],) + ((iv["low"], iv["high"]) if iv else ())

    def judge(self, pred: dict[str, Any]) -> str | None:
        """Why the prediction rules the candidate out (None: it stays in)."""
        for c in self.constraints:
            vals = self._range(c.name, pred)
            if vals is not None and min(c.violation(v) for v in vals) > 0:
                return (f"predicted {c.name} in [{min(vals):.4g}, {max(vals):.4g}] violates "
                        f"'{c.name} {c.op} {c.bound:g}'")
        best: dict[str, float] = {}
        for o in self.objectives:
            vals = self._range(o.name, pred)
            if vals is None and o.metric == "accuracy" and o.direction == "max":
                vals = (1.0,)  # untrained: the best it could reach
            if vals is None:
                return None  # an objective nothing predicts: cannot be dominated
            best[o.name] = min(o.minimized(v) for v in vals)
        from search.objectives import total_violation

        for d in self.store.candidates("done"):
            v = d.get("objectives") or {}
            if any(o.name not in v for o in self.objectives) or total_violation(self.constraints, v) > 0:
                continue
            mine = [o.minimized(float(v[o.name])) for o in self.objectives]
            theirs = [best[o.name] for o in self.objectives]
            if all(a <= b for a, b in zip(mine, theirs)) and any(a < b for a, b in zip(mine, theirs)):
                return f"dominated by measured candidate {d['id']} even at its most optimistic prediction"
        return None

    def check(self, genome: Any) -> Verdict | None:
        """Predict and judge one candidate; None when no key's model is good enough yet."""
        keys = self.keys()
        if not keys:
            return None
        pred = self.predict(genome, keys)
        reason = self.judge(pred) if self.screen else None
        audit = False
        if reason is not None:
            with self._lock:
                self.ruled_out += 1
                audit = bool(self.audit_every) and self.ruled_out % self.audit_every == 0
        pred["screen_reason"], pred["audit"] = reason, audit
        return Verdict(prediction=pred, reason=reason, audit=audit)


def prediction_error(prediction: dict[str, Any], results: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Predicted vs measured latency per key of a measured candidate (``prediction_checked``)."""
    out = {}
    for key, p in prediction.get("latency_ms", {}).items():
        measured = ((results.get(key) or {}).get("latency_ms") or {}).get("median")
        if measured:
            iv = p["interval"]
            out[key] = {"predicted_ms": p["value"], "measured_ms": measured, "label": p["label"],
                        "rel_error": p["value"] / measured - 1.0,
                        "in_interval": bool(iv and iv["low"] <= measured <= iv["high"])}
    return out


class RunPredictor:
    """A run's ``[predictor]``: the per-key cost models fitted from its profiles
    (:class:`~search.costmodel.fleet.FleetModels`, started here), the :class:`Screener` where the
    evaluator builds networks outside the loop's thread, and the predictions of the candidates
    it let through, whose errors are logged once they are measured.

    ``note(kind, candidate_id, error)`` hands a failed prediction to the loop's thread (the store
    is written there); ``evaluate`` is the evaluator's."""

    def __init__(self, *, config: Any, store: Any, space: Any, evaluator: Any, objectives: Sequence[Objective],
                 constraints: Sequence[Constraint], note: Callable[[str, int, str], None]) -> None:
        pr = config.predictor
        self.store, self.evaluate, self.note = store, evaluator.evaluate, note
        self.models = FleetModels(store=store, min_networks=pr.min_networks, refit_every=pr.refit_every,
                                  seed=config.seed)
        self.models.start()
        self.screener: Screener | None = None
        #: candidate id -> the prediction it was let through with
        self.predictions: dict[int, dict[str, Any]] = {}
        task = getattr(evaluator, "task", None)
        if task is None or evaluator.inline:
            why = ("a table look-up runs inline: there is no training thread to screen in"
                   if evaluator.inline else
                   f"{type(evaluator).__name__} names no task to build untrained networks for")
            store.event("screening_unavailable", detail={"reason": why})
            print(f"hwnas: screening unavailable: {why}", file=sys.stderr, flush=True)
            return
        self.screener = Screener(models=self.models, space=space, task=task, objectives=objectives,
                                 constraints=constraints, store=store, max_mape_pct=pr.max_heldout_mape_pct,
                                 audit_share=pr.audit_share, batch=config.measure.batch_size,
                                 screen=pr.screen, screen_out_of_range=pr.screen_out_of_range,
                                 min_heldout=pr.min_heldout)

    def screen_then_evaluate(self, request: Any) -> Any:
        """In a training thread: screen first (a screened candidate returns its Verdict, never
        reaching the evaluator), else evaluate; ``(evaluation, verdict or None)``."""
        verdict = None
        try:
            verdict = self.screener.check(request.genome)
        except Exception as exc:  # noqa: BLE001 - a prediction that fails screens nothing
            self.note("prediction_failed", request.candidate_id, f"{type(exc).__name__}: {exc}")
        if verdict is not None and verdict.screened:
            return verdict
        return self.evaluate(request), verdict

    def let_through(self, cid: int, verdict: Verdict | None) -> None:
        """A candidate screening let through: its prediction is kept (store and memory)."""
        if verdict is not None:
            self.store.set_prediction(cid, verdict.prediction)
            self.predictions[cid] = verdict.prediction

    def learn(self, candidate_id: int, device_key: str, result: dict[str, Any]) -> None:
        """A profile feeds the key's cost model; a predicted candidate's error is logged."""
        if result.get("layers"):
            self.models.observe(device_key)
        pred = self.predictions.get(candidate_id)
        err = prediction_error(pred, {device_key: result}) if pred else {}
        if err:
            self.store.event("prediction_checked", candidate_id=candidate_id,
                             detail={"audit": bool(pred.get("audit")), "reason": pred.get("screen_reason"),
                                     **err[device_key], "device_key": device_key})

    def close(self) -> None:
        """Let a fit in flight write its event before the store closes."""
        self.models.close()
