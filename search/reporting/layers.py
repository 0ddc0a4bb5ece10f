"""Where the time goes (issue 12, part 5): per-layer runtime of each Pareto member, and the
energy-precision ratio where energy was measured.

For each Pareto member and device key whose measurement carries a per-layer profile (a run with
``--predictor``: the agent's ONNX Runtime profiler, one row per executed node), a horizontal bar
chart ``layers_<id>_<key>.png`` of the nodes' median runtime (the slowest 14, the rest summed
as "other"), and the profiled sum beside the timed network latency (the profiler adds a per-node
cost, so the sum is larger). Per-layer energy is not shown: the sensors give the network's
energy only, and it is never apportioned by guess.

The energy-precision ratio (NeuralPower, Cai et al. 2017): ``EPR = error^alpha x energy per
image`` with ``error = 1 - accuracy`` and ``alpha = 1``, computed only from a *measured* energy
(``energy.status == "measured"``); otherwise it says why it is unavailable.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Sequence

from search.provenance import fmt, num

_TOP = 14


def energy_precision_ratio(cand: dict[str, Any], measurement: dict[str, Any], accuracy: str,
                           alpha: float = 1.0) -> tuple[float | None, str]:
    """``(EPR, how)`` for one measured candidate; ``(None, why not)`` without measured energy."""
    energy = measurement.get("energy") or {}
    acc = num((cand.get("objectives") or {}).get(accuracy))
    value = num(energy.get("value_mj"))
    if energy.get("status") != "measured" or value is None:
        return None, f"unavailable: {energy.get('method') or 'no energy measured'}"
    if acc is None:
        return None, "unavailable: no accuracy"
    frac = acc if acc <= 1.0 else acc / 100.0
    batch = int((measurement.get("measure_config") or {}).get("batch_size") or 1)
    epr = (1.0 - frac) ** alpha * value / batch
    return epr, f"(1 - {accuracy})^{alpha:g} x measured energy per image [mJ] ({energy.get('method', '')})"


def _plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: -float(r.get("median_ms", 0.0)))
    shown = rows[:_TOP]
    labels = [f"{r.get('name', '?')[:38]} ({r.get('op_type', '')})" for r in shown]
    values = [float(r.get("median_ms", 0.0)) for r in shown]
    if len(rows) > _TOP:
        labels.append(f"other ({len(rows) - _TOP} nodes)")
        values.append(sum(float(r.get("median_ms", 0.0)) for r in rows[_TOP:]))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(values) + 1.4), dpi=100)
    ax.barh(range(len(values))[::-1], values, color="tab:blue")
    ax.set_yticks(range(len(values))[::-1], labels, fontsize=7)
    ax.set_xlabel("median runtime per node [ms] (measured: ONNX Runtime profiler)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def layer_section(members: Sequence[dict[str, Any]], out: Path, accuracy: str) -> list[str]:
    """The report's HTML lines for the Pareto members (charts written into ``out``)."""
    e = html.escape
    lines = ["<h2>Where the time goes (Pareto members)</h2>"]
    charts, epr_rows = [], []
    for c in members:
        for m in c.get("measurements") or []:
            if not m.get("ok"):
                continue
            key = str(m.get("device_key"))
            epr, how = energy_precision_ratio(c, m, accuracy)
            epr_rows.append(f"<tr><td>#{c['id']}</td><td>{e(key)}</td><td>{e(fmt(epr))}</td><td>{e(how)}</td></tr>")
            layers = m.get("layers") or []
            if not layers:
                continue
            name = f"layers_{c['id']}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.png"
            timed = num((m.get("latency_ms") or {}).get("median"))
            total = sum(float(r.get("median_ms", 0.0)) for r in layers)
            _plot(layers, f"#{c['id']} on {key}: {len(layers)} nodes, profiled sum {total:.3f} ms, "
                          f"timed latency {fmt(timed)} ms", out / name)
            charts.append(f"<p><img src='{e(name)}' alt='{e(name)}'></p>")
    if charts:
        lines += charts
        lines.append("<p>Per-layer energy: not shown; the power sensors give the network's energy only.</p>")
    else:
        lines.append("<p>No Pareto member has a per-layer profile (search with <code>--predictor</code> "
                     "or <code>[measure] profile_layers = true</code>).</p>")
    lines.append("<h3>Energy-precision ratio</h3><table><tr><th>id</th><th>device</th><th>EPR</th>"
                 "<th>how</th></tr>")
    lines += epr_rows
    lines.append("</table>")
    return lines
