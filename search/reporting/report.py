"""The HTML/PNG report of a run: Pareto fronts, the near-best comparison, provenance, failures.

``write_report(results, out_dir, objectives=...)`` takes the results list of a run (the format
of :mod:`search.reporting.results`) and writes into ``out_dir``:

- ``index.html``: plain, self-contained apart from the PNGs: first a "deploy this" box per
  device key (:mod:`search.reporting.recommend`), then the run summary (split sizes, the
  accuracy compared, the chance-level floor, the count of unstable measurements), plots, the
  Pareto table where every number says where it came from (measured / computed / estimated /
  unavailable, and how), the near-best comparison and the failures with their reasons;
- ``front_<objective>.png``: accuracy against each cost objective, every finished candidate
  above the floor in grey, the run's Pareto members highlighted, the 2-D front of that pair
  connected, the latency spread of repeated runs as error bars, labels on the most accurate and
  the recommended network only;
- ``near_best.png``: the study of MENNDL-style searches (Young et al.): how many times cheaper
  the cheapest networks within 1 and 2 accuracy points of the most accurate one are;
- ``near_best.json``: the rows of that comparison;
- ``layers_<id>_<key>.png``: where each Pareto member's time goes, per layer, and its
  energy-precision ratio where energy was measured (:mod:`search.reporting.layers`).
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from search.metrics import unit as metric_unit
from search.objectives import Objective
from search.provenance import cost_values, fmt as _fmt, num as _num, provenance
from search.reporting.recommend import (DEFAULT_MARGIN_POINTS, REAL_SAVING, Recommendation, recommend,
                                       unstable_count)

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


# ---------------------------------------------------------------- analysis

def _accuracy_objective(objectives: Sequence[Objective]) -> Objective:
    for o in objectives:
        if o.metric == "accuracy":
            return o
    return objectives[0]


def _points_scale(accs: Sequence[float]) -> float:
    """Accuracy points per unit: 100 for 0..1 accuracies, 1 for percentages."""
    return 100.0 if max(accs, default=0.0) <= 1.0 else 1.0


def _test_accuracy(c: dict[str, Any]) -> tuple[float | None, str]:
    """A candidate's held-out accuracy: after final training where it had one, else the test
    accuracy measured after the search; ``(None, "")`` when it has neither."""
    final = _num((c.get("final") or {}).get("test_accuracy"))
    if final is not None:
        return final, "test accuracy after final training"
    test = _num(c.get("test_accuracy"))
    return (test, "test accuracy") if test is not None else (None, "")


def near_best(results: Sequence[dict[str, Any]], objectives: Sequence[Objective],
              tolerances: Sequence[float] = (1.0, 2.0)) -> list[dict[str, Any]]:
    """For each tolerance (accuracy points) and cost metric: the cheapest finished candidate
    within that many points of the most accurate one, and how many times cheaper it is.

    On test accuracy when the run has it (the Pareto members', measured after the search or
    after final training), among the candidates that have one; else on the search's accuracy
    objective (validation). Each row's ``accuracy_kind`` says which."""
    acc_o = _accuracy_objective(objectives)
    done = [c for c in results if c.get("status") == "done" and c.get("feasible", True)
            and _num((c.get("objectives") or {}).get(acc_o.name)) is not None]
    tested = {c["id"]: _test_accuracy(c) for c in done if _test_accuracy(c)[0] is not None}
    if tested:
        done = [c for c in done if c["id"] in tested]
        acc = {cid: float(v) for cid, (v, _) in tested.items()}
        kinds = {kind for _, kind in tested.values()}
        kind = kinds.pop() if len(kinds) == 1 else "test accuracy (after final training where there was one)"
    else:
        acc = {c["id"]: float(c["objectives"][acc_o.name]) for c in done}
        kind = f"{acc_o.name} (validation)"
    if not done:
        return []
    scale = _points_scale(list(acc.values()))
    best = max(done, key=lambda c: (acc[c["id"]], -c["id"]))
    best_costs = cost_values(best, objectives)
    rows = []
    for tol in tolerances:
        near = [c for c in done if (acc[best["id"]] - acc[c["id"]]) * scale <= tol + 1e-9]
        for metric, best_v in best_costs.items():
            cands = [(cost_values(c, objectives).get(metric), c) for c in near]
            cands = [(v, c) for v, c in cands if v is not None]
            v, cheap = min(cands, key=lambda t: (t[0], -acc[t[1]["id"]], t[1]["id"]))
            rows.append({
                "tolerance_points": tol, "metric": metric, "accuracy_kind": kind,
                "best_id": best["id"], "best_accuracy": acc[best["id"]], "best_value": best_v,
                "cheapest_id": cheap["id"], "cheapest_accuracy": acc[cheap["id"]], "cheapest_value": v,
                "accuracy_drop_points": (acc[best["id"]] - acc[cheap["id"]]) * scale,
                "ratio": (best_v / v) if v > 0 else (1.0 if best_v == v else math.inf),
                "provenance": provenance(cheap, metric)[0],
            })
    return rows


def _pareto_flags(results: Sequence[dict[str, Any]], objectives: Sequence[Objective]) -> dict[int, bool]:
    flags = {c["id"]: bool(c.get("pareto")) for c in results}
    if any(flags.values()):
        return flags
    try:  # results without flags: compute them
        from search.pareto import pareto_members
    except ImportError:
        return flags
    done = [c for c in results if c.get("status") == "done" and c.get("feasible", True)]
    vals = [c.get("objectives") if all(_num((c.get("objectives") or {}).get(o.name)) is not None
                                       for o in objectives) else None for c in done]
    mask = pareto_members(vals, list(objectives)) if done else []
    flags.update({c["id"]: bool(m) for c, m in zip(done, mask)})
    return flags


def _fidelity_note(results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """With fidelity rungs: at which budget the front's accuracies were taken."""
    budgets = [c.get("fidelity") for c in results if c.get("status") == "done" and c.get("fidelity") is not None]
    if not budgets:
        return {}
    top = max(budgets)
    return {"accuracy fidelity": f"front among the {budgets.count(top)} candidates trained to the highest rung "
                                 f"reached ({top:g} epochs); {len(budgets) - budgets.count(top)} stopped at lower rungs"}


# ---------------------------------------------------------------- plots

def _plot_front(done: list[dict], pareto: dict[int, bool], acc_o: Objective, cost: Objective,
                n_failed: int, path: Path, title: str, *, floor: float = 0.0,
                marks: dict[int, str] | None = None) -> bool:
    """Accuracy against one cost: candidates above ``floor`` only (the count below is given),
    the y axis cut 20 points under the best (lower ones drawn as triangles on the edge), the
    latency spread of repeated runs (min to p90) as error bars, and labels only on ``marks``
    (id -> text: the most accurate and the recommended network), so labels never pile up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from search.reporting.recommend import latency_spread

    pts = [(float(c["objectives"][cost.name]), float(c["objectives"][acc_o.name]), c)
           for c in done if _num(c["objectives"].get(cost.name)) is not None
           and _num(c["objectives"].get(acc_o.name)) is not None]
    n_chance = sum(1 for p in pts if p[1] <= floor)
    pts = [p for p in pts if p[1] > floor]
    if not pts:
        return False
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    member = np.array([pareto.get(p[2]["id"], False) for p in pts])
    scale = _points_scale(list(y))
    low = max(y.max() - 20.0 / scale, y.min())
    clipped = y < low
    yplot = np.where(clipped, low, y)
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    metric = cost.metric
    key = cost.name.partition("@")[2] or None
    if metric == "latency_ms":  # spread of the repeated timed runs, min to p90
        lo_err, hi_err = [], []
        for xi, (_, _, c) in zip(x, pts):
            sp = latency_spread(c, key)
            lo_err.append(max(xi - sp[0], 0.0) if sp else 0.0)
            hi_err.append(max(sp[2] - xi, 0.0) if sp else 0.0)
        ax.errorbar(x, yplot, xerr=[lo_err, hi_err], fmt="none", ecolor="0.75", elinewidth=0.8, zorder=1,
                    label="latency spread of repeated runs (min to p90)")
    keep = ~clipped
    ax.scatter(x[~member & keep], y[~member & keep], c="0.6", s=22, label="candidate", zorder=2)
    ax.scatter(x[member & keep], y[member & keep], c="tab:red", s=46, edgecolors="k", linewidths=0.6,
               label="Pareto member (all objectives)", zorder=4)
    if clipped.any():
        ax.scatter(x[clipped], yplot[clipped], marker="v", c="0.4", s=26, zorder=2,
                   label=f"{int(clipped.sum())} more than 20 points below the best (drawn on the edge)")
    # the 2-D front of this pair, as a staircase (cost min, accuracy in its own direction)
    sign = -1.0 if acc_o.direction == "max" else 1.0
    order = np.lexsort((sign * y, x))
    front, best = [], math.inf
    for i in order:
        if sign * y[i] < best and not clipped[i]:
            best = sign * y[i]
            front.append(i)
    ax.step(x[front], y[front], where="post", color="tab:red", lw=1.4, alpha=0.8,
            label=f"front of {acc_o.name} vs {cost.name}", zorder=3)
    log_x = x.min() > 0 and x.max() / x.min() > 20
    if log_x:
        ax.set_xscale("log")
    tx = np.log(x) if log_x else x
    by_id = {p[2]["id"]: i for i, p in enumerate(pts)}
    for n, (cid, text) in enumerate((marks or {}).items()):
        if cid in by_id:
            i = by_id[cid]
            ax.scatter([x[i]], [yplot[i]], s=140, facecolors="none", edgecolors="tab:blue", linewidths=1.5, zorder=5)
            # the two labels go above and below, and toward the middle of the axes, so they
            # neither cover each other nor leave the figure
            right = tx.max() > tx.min() and (tx[i] - tx.min()) / (tx.max() - tx.min()) > 0.6
            ax.annotate(text, (x[i], yplot[i]), textcoords="offset points",
                        xytext=(-10 if right else 10, -18 if n else 10), ha="right" if right else "left",
                        fontsize=8, color="tab:blue", arrowprops={"arrowstyle": "-", "color": "tab:blue", "lw": 0.6},
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "tab:blue", "lw": 0.5})
    unit = metric_unit(cost.metric)
    ax.set_xlabel(f"{cost.name}" + (f" [{unit}]" if unit else "") + " (lower is better)")
    ax.set_ylabel(acc_o.name + (" (higher is better)" if acc_o.direction == "max" else ""))
    ax.set_title(f"{title}: {acc_o.name} vs {cost.name}\n{len(pts)} candidates plotted,"
                 f" {int(member.sum())} Pareto members; not plotted: {n_chance} at chance level"
                 f" (<= {floor:.3g}), {n_failed} failed", fontsize=9)
    lo_y, hi_y = ax.get_ylim()
    ax.set_ylim(lo_y, hi_y + 0.08 * (hi_y - lo_y))  # headroom: the best's label stays under the title
    ax.grid(True, alpha=0.3)
    # below the axes: inside, it would cover the points drawn on the lower edge
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def _plot_near_best(rows: list[dict], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if math.isfinite(r["ratio"])]
    if not rows:
        return False
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    tols = list(dict.fromkeys(r["tolerance_points"] for r in rows))
    height = 0.8 / len(tols)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.55 * len(metrics) * len(tols) + 0.6), dpi=110)
    top = max(r["ratio"] for r in rows)
    for j, tol in enumerate(tols):
        by_m = {r["metric"]: r for r in rows if r["tolerance_points"] == tol}
        ys = np.arange(len(metrics)) + (j - (len(tols) - 1) / 2) * height
        ws = [by_m[m]["ratio"] if m in by_m else 0.0 for m in metrics]
        bars = ax.barh(ys, ws, height=height * 0.9, label=f"within {tol:g} accuracy point(s) of the best")
        for bar, m in zip(bars, metrics):
            if m not in by_m:
                continue
            r = by_m[m]
            who = ("the most accurate itself" if r["cheapest_id"] == r["best_id"] else
                   f"#{r['cheapest_id']}, {r['accuracy_drop_points']:.2f} pt less accurate")
            ax.annotate(f" {r['ratio']:.3g}x  ({who})", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                        va="center", ha="left", fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(np.arange(len(metrics)))
    ax.set_yticklabels(metrics, fontsize=8)
    ax.invert_yaxis()
    if top > 50:
        ax.set_xscale("log")
        ax.set_xlim(right=top * 30)
    else:
        ax.set_xlim(0, top * 1.9 + 0.5)
    ax.set_xlabel("times cheaper than the most accurate network (higher is better)")
    best = rows[0]
    ax.set_title(f"{title}: cheapest networks near the most accurate\n(most accurate: #{best['best_id']},"
                 f" accuracy {best['best_accuracy']:.4g})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(tols), frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


# ---------------------------------------------------------------- HTML

_CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;
margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;
vertical-align:top}th{background:#eee}.prov{color:#555;font-size:85%;min-width:16em}.measured{color:#060}
.computed{color:#036}.estimated{color:#a60}.unavailable{color:#a00}img{max-width:100%}
code{font-size:85%}td.arch{max-width:18em;word-break:break-all}
.deploy{border:2px solid #2a6;background:#f3fbf5;padding:0.6em 1.2em;margin:1em 0}
.deploy.none{border-color:#c80;background:#fff8ec}.deploy h3{margin:0.2em 0}"""


def _genome_text(c: dict[str, Any], limit: int = 160) -> str:
    g = c.get("arch_key") or json.dumps(c.get("genome"), sort_keys=True, separators=(",", ":"))
    return g if len(g) <= limit else g[: limit - 1] + "…"


def _cell(c: dict[str, Any], name: str) -> str:
    v = (c.get("objectives") or {}).get(name)
    status, how = provenance(c, name)
    return (f"{html.escape(_fmt(v))}<div class='prov'><span class='{html.escape(status)}'>"
            f"{html.escape(status)}</span>: {html.escape(how)}</div>")


def _deploy_box(r: "Recommendation", acc_name: str) -> str:
    """The "deploy this" box of one device key: what to deploy, why, and how sure."""
    e = html.escape
    where = f"on {r.device_key}" if r.device_key else "(no device-bound objective)"
    split = f"{r.basis} split" + (f" of {r.eval_images} images" if r.eval_images else " (size not recorded)")
    tol = f"{r.tolerance_points:g} accuracy point" + ("" if r.tolerance_points == 1 else "s")
    if r.tolerance_images is not None:
        tol += f" (= {r.tolerance_images:.1f} images of the {split})"
    if r.chosen is None:
        return (f"<div class='deploy none' id='deploy-{e(_slug(str(r.device_key)))}'><h3>Deploy {e(where)}: "
                f"no recommendation</h3><p>No finished candidate above the accuracy floor "
                f"{r.floor:.3g} with every cost measured.</p></div>")
    c, b = r.chosen, r.best
    parts = [f"<div class='deploy{'' if r.real_saving else ' none'}' id='deploy-{e(_slug(str(r.device_key)))}'>",
             f"<h3>Deploy this {e(where)}: candidate #{c['id']}</h3>",
             f"<p>{acc_name} {r.chosen_accuracy:.4f} on the {e(split)}; the most accurate network is "
             f"#{b['id']} at {r.best_accuracy:.4f}{e(_ties(r))}. Rule: the cheapest network (by {e(str(r.primary_cost))}, "
             f"then the other costs) within {e(tol)} of the most accurate, among {r.eligible} candidates above "
             f"the accuracy floor {r.floor:.3g}.</p><ul>"]
    for name, (bv, cv, ratio) in r.savings.items():
        parts.append(f"<li>{e(name)}: {e(_fmt(cv))} against {e(_fmt(bv))} — <b>{ratio:.2f}x</b> "
                     f"{'cheaper' if ratio >= 1 else 'costlier'}</li>")
    parts.append("</ul>")
    if c["id"] == b["id"]:
        parts.append(f"<p><b>No saving in this run:</b> no network within {e(tol)} of the most accurate is "
                     "cheaper than it, so the most accurate network is also the one to deploy. "
                     "This run does not show the MENNDL effect.</p>")
    elif not r.real_saving:
        parts.append(f"<p><b>No real saving in this run:</b> the cheapest near-best network is less than "
                     f"{REAL_SAVING:g}x cheaper in every cost; the difference is not a finding.</p>")
    else:
        parts.append(f"<p><b>A real saving:</b> {r.best_saving:.2f}x cheaper within {e(tol)}.</p>")
    if r.latency_within_noise:
        parts.append("<p>Latency: the two networks' spreads of repeated runs overlap (the cheaper one's p90 "
                     "reaches the other's median), so the latency ratio is within measurement noise.</p>")
    parts.append("</div>")
    return "".join(parts)


def _ties(r: "Recommendation") -> str:
    """A note when other networks share the best accuracy (the first found is called the best)."""
    others = [i for i in r.tied_best if i != r.best["id"]]
    if not others:
        return ""
    return f" (tied with {', '.join(f'#{i}' for i in others)}; the first found is taken as the most accurate)"


def _on_basis(results: list[dict[str, Any]], acc_name: str, basis: str, floor: float) -> list[dict[str, Any]]:
    """Finished candidates above ``floor`` with their accuracy replaced by the ``basis`` one."""
    from search.reporting.recommend import held_out_accuracy

    out = []
    for c in results:
        if c.get("status") != "done":
            continue
        acc = held_out_accuracy(c) if basis == "test" else _num((c.get("objectives") or {}).get(acc_name))
        if acc is not None and acc > floor:
            out.append({**c, "objectives": {**(c.get("objectives") or {}), acc_name: acc}})
    return out


def write_report(results: list[dict[str, Any]], out_dir: str, *, objectives: list[Objective],
                 title: str = "hwnas run", summary: dict[str, Any] | None = None,
                 tolerances: Sequence[float] = (1.0, 2.0), dataset: dict[str, Any] | None = None,
                 margin_points: float = DEFAULT_MARGIN_POINTS) -> str:
    """Write ``index.html`` and its PNGs for ``results`` into ``out_dir``; return the HTML path.

    summary: extra ``name -> value`` lines for the run summary (dataset, space, budget, ...).
    dataset: the run's dataset record (class count and split sizes, see
    :func:`search.loop.setup.describe_source`): it sets the chance-level floor
    (``1/num_classes + margin_points``) and states the tolerance in images.
    """
    if not objectives:
        raise ValueError("write_report needs the run's objectives")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc_o = _accuracy_objective(objectives)
    costs = [o for o in objectives if o is not acc_o]
    pareto = _pareto_flags(results, objectives)
    done = [c for c in results if c.get("status") == "done"]
    failed = [c for c in results if c.get("status") == "failed"]
    recs = recommend(results, objectives, dataset=dataset, tolerance_points=tolerances[0],
                     margin_points=margin_points)
    floor = recs[0].floor
    basis = recs[0].basis
    members = sorted((c for c in done if pareto.get(c["id"])),  # best accuracy first
                     key=lambda c: acc_o.minimized(_num((c.get("objectives") or {}).get(acc_o.name)) or 0.0))
    chance = [c for c in members if (_num(c["objectives"].get(acc_o.name)) or 0.0) <= floor]
    plots: list[str] = []
    for cost in costs:
        key = cost.name.partition("@")[2] or None
        rec = next((r for r in recs if r.device_key == key), recs[0])
        marks: dict[int, str] = {}
        if rec.best is not None:
            marks[rec.best["id"]] = f"#{rec.best['id']} most accurate"
            if rec.chosen["id"] != rec.best["id"]:
                marks[rec.chosen["id"]] = f"#{rec.chosen['id']} deploy this"
            else:
                marks[rec.best["id"]] += " = deploy this"
        name = f"front_{_slug(cost.name)}.png"
        if _plot_front(done, pareto, acc_o, cost, len(failed), out / name, title, floor=floor, marks=marks):
            plots.append(name)
    rows = near_best(_on_basis(results, acc_o.name, basis, floor), objectives, tolerances)
    (out / "near_best.json").write_text(json.dumps(rows, indent=1))
    if _plot_near_best(rows, out / "near_best.png", title):
        plots.append("near_best.png")

    e = html.escape
    status_counts: dict[str, int] = {}
    for c in results:
        status_counts[c.get("status", "?")] = status_counts.get(c.get("status", "?"), 0) + 1
    lines = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>", "<h2>Which network to deploy</h2>"]
    lines += [_deploy_box(r, acc_o.name) for r in recs]
    n_unstable, n_meas = unstable_count(results)
    ds = dataset or {}
    info: dict[str, Any] = {
        "candidates": len(results),
        "by status": ", ".join(f"{k}: {v}" for k, v in sorted(status_counts.items())),
        "objectives": ", ".join(f"{o.direction} {o.name}" for o in objectives),
        "splits (images)": (f"train {_fmt(ds.get('train'))}, validation {_fmt(ds.get('val'))} (the search "
                            f"selects on it), test {_fmt(ds.get('test'))}" if ds else "not recorded"),
        "accuracy compared": (f"{basis} accuracy" + ("" if basis == "test" else
                                                     " (no test accuracy in the results)")),
        "accuracy floor": (f"{floor:.3g} = chance (1/{ds.get('num_classes')}) + {margin_points:g} points: "
                           "candidates at or below it are not plotted, recommended or exported"
                           if floor else "none (class count not recorded)"),
        "Pareto members": ", ".join(f"#{c['id']}" for c in members) or "none",
        "Pareto members at chance level": ", ".join(f"#{c['id']}" for c in chance) or "none",
        "unstable measurements": (f"{n_unstable} of {n_meas} (the agent's timed runs drifted: their latency "
                                  "is given with its spread, min to p90, not a confidence interval)"),
        **_fidelity_note(results),
        "report written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if rows:
        info["most accurate"] = f"#{rows[0]['best_id']} ({basis} {acc_o.name} {_fmt(rows[0]['best_accuracy'])})"
    info.update(summary or {})
    lines.append("<h2>Summary</h2><table>")
    lines += [f"<tr><th>{e(str(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in info.items()]
    lines.append("</table>")

    lines.append("<h2>Plots</h2>")
    lines += [f"<p><img src='{e(p)}' alt='{e(p)}'></p>" for p in plots] or ["<p>No plottable candidates.</p>"]

    lines.append(f"<h2>Pareto set ({len(members)})</h2><table><tr><th>id</th>"
                 + "".join(f"<th>{e(o.name)} ({o.direction})</th>" for o in objectives)
                 + "<th>test accuracy</th><th>after final training (val / test)</th><th>architecture</th></tr>")
    for c in members:
        final = c.get("final") or {}
        lines.append(f"<tr><td>#{c['id']}{' (chance level)' if c in chance else ''}</td>"
                     + "".join(f"<td>{_cell(c, o.name)}</td>" for o in objectives)
                     + f"<td>{e(_fmt(c.get('test_accuracy')))}</td>"
                     + f"<td>{e(_fmt(final.get('val_accuracy')))} / {e(_fmt(final.get('test_accuracy')))}</td>"
                     + f"<td class='arch'><code>{e(_genome_text(c))}</code></td></tr>")
    lines.append("</table>")
    from search.reporting.layers import layer_section

    lines += layer_section(members, out, acc_o.name)

    lines.append(f"<h2>Near-best networks against the most accurate ({basis} accuracy)</h2>")
    if rows:
        lines.append(f"<p>Accuracy: {e(rows[0]['accuracy_kind'])}.</p>")
        lines.append("<table><tr><th>within</th><th>metric</th><th>most accurate</th><th>cheapest near-best</th>"
                     "<th>accuracy drop (points)</th><th>times cheaper</th></tr>")
        for r in rows:
            lines.append(
                f"<tr><td>{r['tolerance_points']:g} pt</td><td>{e(r['metric'])}</td>"
                f"<td>#{r['best_id']}: {e(_fmt(r['best_value']))}</td>"
                f"<td>#{r['cheapest_id']}: {e(_fmt(r['cheapest_value']))} ({e(r['provenance'])})</td>"
                f"<td>{r['accuracy_drop_points']:.2f}</td><td>{r['ratio']:.2f}x</td></tr>")
        lines.append("</table>")
    else:
        lines.append("<p>No finished candidate with an accuracy above the floor.</p>")

    lines.append(f"<h2>Failures ({len(failed)})</h2>")
    if failed:
        lines.append("<table><tr><th>id</th><th>reason</th><th>architecture</th></tr>")
        lines += [f"<tr><td>#{c['id']}</td><td>{e(str(c.get('error') or 'no reason recorded'))}</td>"
                  f"<td><code>{e(_genome_text(c))}</code></td></tr>" for c in failed]
        lines.append("</table>")
    meas_fail = [(c, m) for c in done for m in c.get("measurements") or [] if m.get("error")]
    if meas_fail:
        lines.append("<h3>Failed measurements</h3><table><tr><th>id</th><th>device</th><th>reason</th></tr>")
        lines += [f"<tr><td>#{c['id']}</td><td>{e(str(m.get('device_key')))}</td><td>{e(str(m['error']))}</td></tr>"
                  for c, m in meas_fail]
        lines.append("</table>")

    lines.append("<h2>All finished candidates</h2><table><tr><th>id</th><th>Pareto</th>"
                 + "".join(f"<th>{e(o.name)}</th>" for o in objectives) + "</tr>")
    for c in sorted(done, key=lambda c: c["id"]):
        lines.append(f"<tr><td>#{c['id']}</td><td>{'yes' if pareto.get(c['id']) else ''}</td>"
                     + "".join(f"<td>{e(_fmt((c.get('objectives') or {}).get(o.name)))}</td>" for o in objectives)
                     + "</tr>")
    lines.append("</table></body></html>")
    index = out / "index.html"
    index.write_text("\n".join(lines), encoding="utf-8")
    return str(index)
