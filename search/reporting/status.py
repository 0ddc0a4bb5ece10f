"""``hwnas status DIR``: agents, queue depth, throughput, failures and retries of a run.

Read from the store alone, so it works while the search runs (SQLite WAL allows a reader beside
the writer) and after it stopped or was killed.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from search.loop.store import Store


def training_throughput(cands: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Training throughput over the trained candidates: images/s (all training images over all
    training time, validation excluded, as each trainer measured it) and the devices."""
    recs = [c["train"] for c in cands if (c.get("train") or {}).get("images_per_s")]
    if not recs:
        return None
    images = sum(r.get("train_images", 0) for r in recs)
    seconds = sum(r.get("train_images", 0) / r["images_per_s"] for r in recs)
    return {"trained": len(recs), "images_per_s": images / seconds if seconds else None,
            "devices": sorted({str(r.get("device")) for r in recs})}


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """A snapshot of a run as a dict."""
    st = Store(run_dir, read_only=True)
    try:
        counts = st.count()
        jobs = st.jobs()
        agents: dict[str, dict[str, Any]] = {}
        retries = 0
        for ev in st.events():
            a = ev["agent"]
            if ev["kind"] == "agent_joined":
                prev = agents.get(a, {})
                agents[a] = {"address": a, "device_key": ev["detail"].get("device_key"), "health": "ok",
                             "lost": prev.get("lost", 0), "measured": 0, "since": ev["time"],
                             "registered": prev.get("registered", False), "left": None}
            elif ev["kind"] == "agent_registered" and a in agents:
                agents[a]["registered"] = True
            elif ev["kind"] == "agent_removed" and a in agents:
                reason = ev["detail"].get("reason") or "removed"
                agents[a]["health"] = "left" if reason.startswith("deregistered") else "dropped"
                agents[a]["left"] = reason
            elif ev["kind"] == "agent_lost" and a in agents:
                agents[a]["health"] = "lost"
                agents[a]["lost"] += 1
            elif ev["kind"] == "agent_auth_failed" and a in agents:
                agents[a]["health"] = "auth"
                agents[a]["left"] = f"refuses our credentials: {ev['detail'].get('reason')}"
            elif ev["kind"] == "agent_recovered" and a in agents:
                agents[a]["health"], agents[a]["left"] = "ok", None
            if ev["kind"] == "job_requeued":
                retries += 1
        for m in st.measurements():
            if m["agent"] in agents:
                agents[m["agent"]]["measured"] += 1
        cands = st.candidates()
        finished = [c["updated"] for c in cands if c["status"] in ("done", "failed", "infeasible")]
        t0 = min((c["created"] for c in cands), default=time.time())
        span = (max(finished) - t0) if finished else 0.0
        queue: dict[str, int] = {}
        for j in jobs:
            if j["state"] in ("queued", "leased"):
                queue[f"{j['device_key']}:{j['state']}"] = queue.get(f"{j['device_key']}:{j['state']}", 0) + 1
        finished_events = st.events("search_finished")
        failed_jobs = sum(1 for j in jobs if j["state"] == "failed")
        return {
            "run_dir": str(run_dir),
            "candidates": counts,
            "agents": list(agents.values()),
            "queue": queue,
            "retries": retries,
            "quarantined": len(st.events("model_quarantined")),
            "failed_jobs": failed_jobs,
            "late_results_ignored": len(st.events("late_result_ignored")),
            "registry": st.get_meta("registry"),
            "throughput_per_min": (60.0 * len(finished) / span) if span > 0 else None,
            "training": training_throughput(cands),
            "failures": [{"id": c["id"], "error": c["error"]} for c in cands if c["status"] == "failed"],
            "finished": bool(finished_events),
        }
    finally:
        st.close()


def format_status(s: dict[str, Any]) -> str:
    """Human-readable form of :func:`run_status`."""
    lines = [f"run {s['run_dir']}  ({'finished' if s['finished'] else 'running or stopped'})"]
    c = s["candidates"]
    lines.append("candidates: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) +
                 (f"; {s['throughput_per_min']:.1f}/min" if s["throughput_per_min"] else ""))
    lines.append(f"retries {s['retries']}, quarantined {s['quarantined']}, failed jobs {s['failed_jobs']}, "
                 f"late results ignored {s['late_results_ignored']}, queue {s['queue'] or 'empty'}")
    t = s.get("training")
    if t and t["images_per_s"]:
        lines.append(f"training: {t['images_per_s']:.0f} images/s over {t['trained']} trained candidates "
                     f"on {', '.join(t['devices'])}")
    if s.get("registry"):
        lines.append(f"registry {s['registry']['address']} (heartbeat {s['registry']['heartbeat_s']:g} s)")
    lines.append("agents:")
    for a in s["agents"]:
        lines.append(f"  {a['address']:24s} {a['device_key']:32s} {a['health']:7s} measured {a['measured']}"
                     f" lost {a['lost']}" + (" registered" if a.get("registered") else "")
                     + (f" ({a['left']})" if a.get("left") else ""))
    if s["failures"]:
        lines.append("failures:")
        for f in s["failures"][:20]:
            lines.append(f"  #{f['id']}: {f['error']}")
    return "\n".join(lines)
