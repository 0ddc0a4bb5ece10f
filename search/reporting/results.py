"""The results of a run as JSON (``hwnas results DIR --json``).

File format: a JSON list, one object per candidate, in proposal order::

    {
      "id": 7, "status": "done" | "failed" | "screened" | "pending" | "trained", "error": null | "reason",
      "space": "menndl", "arch_key": "...", "genome": {...}, "parents": [2, 5], "origin": "mutate",
      "objectives": {"accuracy": 0.95, "latency_ms@cpu-...": 0.21, "params": 12034},
      "feasible": true, "pareto": true,
      "kinds": {"accuracy": "measured", "latency_ms@cpu-...": "measured", "params": "computed"},
      "train": {"accuracy": 0.95, "epochs": 4, ..., "source": "trained on ...", "device": "cpu",
                "images_per_s": 5400.0, "test_accuracy": 0.94 (Pareto members, after the search)},
      "val_accuracy": 0.95, "test_accuracy": 0.94 | null, "train_device": "cpu",
      "final": null | {"epochs": 30, "val_accuracy": ..., "test_accuracy": ..., "model_sha256": ...,
                       "weights": "final/7.pt", "onnx_path": "models/<sha>.onnx", ...},
      "params": 12034, "size_mb": 0.05, "model_sha256": "...", "onnx_path": "models/<sha>.onnx",
      "measurements": [
        {"device_key": "...", "agent": "127.0.0.1:40123", "ok": true, "error": null,
         "latency_ms": {"median": ..., "p99": ..., "ci_low": ..., "method": "...", "status": "measured"},
         "peak_memory_mb": {"value": ..., "status": "measured", "method": "..."},   (host RSS)
         "device_peak_mb": null | {"value": ..., "status": "computed" | "measured", "method": "..."},
         "energy": {"value_mj": null, "status": "unavailable", "method": "no power sensor: ..."},
         "flags": [], "output_check": {...}, "provenance": {...},
         "build_config": {...}, "measure_config": {...}, "layers": [per-node profile rows]}
      ],
      "prediction": null | {"latency_ms": {KEY: {"value", "interval", "label": "estimated:costmodel-<id>", ...}},
                            "computed": {"params", "size_mb"}, "screen_reason", "audit"}
    }

``pareto`` marks the non-dominated members among the feasible finished candidates under the
run's objectives (objective names bound to device keys, as stored in the run's meta).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from search.loop.store import Store
from search.objectives import Constraint, Objective, total_violation
from search.pareto import pareto_members
from search.provenance import provenance


def pareto_ids(done: Sequence[dict[str, Any]], objectives: Sequence[Objective],
               constraints: Sequence[Constraint] = ()) -> list[int]:
    """Ids of the Pareto members among finished candidates (infeasible ones excluded). With
    fidelity rungs, only the candidates at the highest fidelity reached (:func:`front_fidelity`)
    are compared: a lower rung's accuracy is not that of a full training."""
    top = front_fidelity(done)
    if top is not None:
        done = [c for c in done if fidelity_budget(c) == top]
    values = [c.get("objectives") for c in done]
    feasible = [v is not None and total_violation(list(constraints), v) == 0 for v in values]
    mask = pareto_members(values, list(objectives), feasible)
    return [c["id"] for c, m in zip(done, mask) if m]


def accuracies(train: dict[str, Any] | None) -> dict[str, Any]:
    """The accuracies of a training record: ``val_accuracy`` (the search's fitness),
    ``test_accuracy`` (measured once after the search, Pareto members only), the training
    ``train_device``, and ``final`` (``hwnas train-final``'s record, or None)."""
    t = train or {}
    return {"val_accuracy": t.get("accuracy"), "test_accuracy": t.get("test_accuracy"),
            "train_device": t.get("device"), "final": t.get("final")}


def fidelity_budget(c: dict[str, Any]) -> float | None:
    """The rung budget (epochs) behind a candidate's accuracy, or None (full training, a table)."""
    return ((c.get("train") or {}).get("fidelity") or {}).get("budget")


def front_fidelity(done: Sequence[dict[str, Any]]) -> float | None:
    """The highest rung budget (epochs) any finished candidate reached; None without rungs."""
    budgets = [b for b in (fidelity_budget(c) for c in done) if b is not None]
    return max(budgets) if budgets else None


def run_objectives(store: Store) -> tuple[list[Objective], list[Constraint]]:
    """The bound objectives and constraints the run was searched with."""
    objs = [Objective(**o) for o in store.get_meta("objectives", [])]
    cons = [Constraint(**c) for c in store.get_meta("constraints", [])]
    return objs, cons


def _measurement(m: dict[str, Any]) -> dict[str, Any]:
    r = m["result"]
    return {
        "device_key": m["device_key"], "agent": m["agent"], "ok": m["ok"], "error": r.get("error"),
        "error_kind": r.get("error_kind"), "job_id": m["job_id"], "backend": r.get("backend"),
        "latency_ms": r.get("latency_ms"), "peak_memory_mb": r.get("peak_memory_mb"),
        "device_peak_mb": r.get("device_peak_mb"),
        "energy": r.get("energy"), "flags": r.get("flags", []), "output_check": r.get("output_check"),
        "layers": r.get("layers", []), "provenance": r.get("provenance", {}),
        "build_config": r.get("build_config", {}), "measure_config": r.get("measure_config", {}),
    }


def collect(run_dir: str | Path) -> list[dict[str, Any]]:
    """Read a run directory into the results list described in the module docstring."""
    store = Store(run_dir, read_only=True)
    try:
        objs, cons = run_objectives(store)
        space = (store.get_meta("config") or {}).get("space")
        cands = store.candidates()
        done = [c for c in cands if c["status"] == "done"]
        members = set(pareto_ids(done, objs, cons)) if objs else set()
        by_cand: dict[int, list] = {}
        for m in store.measurements():
            by_cand.setdefault(m["candidate_id"], []).append(_measurement(m))
        out = []
        for c in cands:
            values = c["objectives"]
            out.append({
                "id": c["id"], "status": c["status"], "error": c["error"], "space": space,
                "arch_key": c["arch_key"], "genome": c["genome"], "parents": c["parents"],
                "origin": c["origin"], "objectives": values or {},
                "feasible": values is not None and total_violation(cons, values) == 0,
                "pareto": c["id"] in members, "fidelity": fidelity_budget(c), "train": c["train"], "params": c["params"],
                **accuracies(c["train"]),
                "size_mb": c["size_mb"], "model_sha256": c["model_sha256"],
                "onnx_path": f"models/{c['model_sha256']}.onnx" if c["model_sha256"] else None,
                "measurements": by_cand.get(c["id"], []),
                # the cost model's prediction (status screened, or an audited one): estimated,
                # labelled, never an objective value
                "prediction": c.get("prediction"),
            })
        for row in out:  # what each objective value is: measured, published, simulated, ...
            row["kinds"] = {name: provenance(row, name)[0] for name in row["objectives"]}
        return out
    finally:
        store.close()
