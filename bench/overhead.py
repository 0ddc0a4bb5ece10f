"""Time per candidate spent outside training and the timed loop.

Runs a real search (digits, MENNDL space, one local agent on loopback, real training, real ONNX
Runtime measurements) and splits each candidate's time into:

- train: the training itself (excluded from overhead),
- timed loop: warm-up + timed iterations on the agent, re-measure included (excluded),
- export: torch -> ONNX on the server, written to the run directory,
- storage: every SQLite transaction of the store (timed by wrapping the Store's methods),
- scheduling: a job's wait in the server's queue until an agent takes it,
- transfer + RPC: the Measure call as the server sees it minus the agent's job time,
- agent job set-up: the agent's job time minus the timed loop (child process, validation,
  session build, output check against ONNX Runtime CPU).

Usage: ``python bench/overhead.py [--budget 16] [--out DIR]``. Prints a table of means and
medians per candidate and the overhead as a share of the candidate's wall time.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import config as cfgmod  # noqa: E402
from search.loop.runner import SearchRunner  # noqa: E402
from search.loop.store import Store  # noqa: E402

_STORE_TIME = [0.0, 0]


def _time_store_methods() -> None:
    """Wrap every public Store method to add up the time spent in SQLite."""
    for name in ("add_candidate", "set_trained", "finish_candidate", "fail_candidate", "lease_job",
                 "requeue_job", "record_measurement", "fail_job", "event", "candidate", "candidates",
                 "jobs", "measurements", "count", "set_meta", "get_meta"):
        orig = getattr(Store, name)

        @functools.wraps(orig)
        def wrapped(self, *a, __orig=orig, **kw):
            t0 = time.perf_counter()
            try:
                return __orig(self, *a, **kw)
            finally:
                _STORE_TIME[0] += time.perf_counter() - t0
                _STORE_TIME[1] += 1

        setattr(Store, name, wrapped)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--out", help="run directory (default: a temporary one)")
    args = ap.parse_args()

    _time_store_methods()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hwnas-overhead-")) / "run"
    cfg = dataclasses.replace(cfgmod.SearchConfig(), budget=args.budget)
    t0 = time.perf_counter()
    summary = SearchRunner(config=cfg, run_dir=out, progress=False).run()
    wall = time.perf_counter() - t0
    store_s, store_calls = _STORE_TIME

    st = Store(out, read_only=True)
    cands = {c["id"]: c for c in st.candidates()}
    rows: dict[str, list[float]] = {k: [] for k in (
        "train", "timed loop", "export", "scheduling", "transfer + RPC", "agent job set-up")}
    for m in st.measurements():
        r = m["result"]
        prov = r.get("provenance", {})
        job = prov.get("agent_job", {})
        timing = prov.get("timing", {})
        client = r.get("client", {})
        if not (job and timing and client):
            continue
        cfg_m = r.get("measure_config", {})
        loop = timing.get("duration_s", 0.0) + cfg_m.get("warmup_s", 0.0)
        fp = timing.get("first_pass")
        if fp:  # the re-measure after a high CV: its duration is count x mean, at least the median
            loop += max(cfg_m.get("min_duration_s", 0.0), fp["count"] * fp["median"] / 1e3)
        job_s = job["finished_at"] - job["started_at"]
        rows["timed loop"].append(loop)
        rows["agent job set-up"].append(max(0.0, job_s - loop))
        rows["transfer + RPC"].append(max(0.0, client["rpc_s"] - job_s))
        rows["scheduling"].append(client.get("queue_wait_s", 0.0))
        t = cands[m["candidate_id"]].get("train") or {}
        timings = t.get("server_timings", {})
        rows["train"].append(timings.get("train_s", 0.0))
        rows["export"].append(timings.get("export_s", 0.0))
    n = summary["candidates"]
    st.close()

    print(f"hwnas overhead benchmark: {n} candidates, {summary['done']} done, {summary['failed']} failed, "
          f"wall {wall:.1f} s (digits, MENNDL space, 1 local ONNX Runtime agent, 2 CPU cores)")
    print(f"{'part':24s} {'mean s/cand':>12s} {'median s':>10s}  in overhead?")
    overhead = 0.0
    for name, vals in rows.items():
        if not vals:
            continue
        mean = statistics.fmean(vals)
        counted = name not in ("train", "timed loop")
        overhead += mean if counted else 0.0
        print(f"{name:24s} {mean:12.4f} {statistics.median(vals):10.4f}  {'yes' if counted else 'no'}")
    per_cand_store = store_s / max(n, 1)
    overhead += per_cand_store
    print(f"{'storage (SQLite)':24s} {per_cand_store:12.4f} {'':>10s}  yes   ({store_calls} calls, "
          f"{1e3 * store_s / max(store_calls, 1):.2f} ms/call)")
    print(f"overhead per candidate (export + storage + scheduling + transfer/RPC + agent set-up): "
          f"{overhead:.3f} s = {100 * overhead / (wall / max(n, 1)):.1f} % of the wall time per candidate "
          f"({wall / max(n, 1):.2f} s)")
    print("note: training and measurement overlap (asynchronous loop), so the parts do not add up to the "
          "wall time; scheduling is the wait of a trained candidate for a free agent.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
