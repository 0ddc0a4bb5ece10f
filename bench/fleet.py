"""Dispatcher throughput: the search server against 1, 4, 16, 64 agents whose measurements are instant.

The agents are real gRPC agent servers on loopback (``device_agent.rpc.server.create_server``) with
the table backend over the shared NAS-Bench-201 table (a measurement is a dict look-up), several
servers per worker process so 64 agents fit on a small machine. The server side is the real
:class:`search.loop.runner.SearchRunner` (NSGA-II on the ``nb201`` space, accuracy from the table, a
real SQLite store in a temporary folder, no ONNX export because every agent is table-backed).

For each fleet size it prints evaluations per second (candidates finished / wall time of
``SearchRunner.run``), server CPU time per evaluation (``time.process_time()`` of this process
over the run / candidates: the search loop, the pool's agent threads and gRPC's own threads)
and, for comparison, the agent processes' CPU time per evaluation (``psutil`` user + system
time of the worker processes over the run; they share the machine with the server). Set-up
is outside all of them: agent start and, unless ``--no-warmup``, one short untimed search per
fleet size (max(64, 4 x agents) candidates: first-call imports and start-up of the agents and
of this process, gRPC thread pools), so the figures are the steady state of a long search;
each timed run still includes its own store creation, connections to the agents and
accuracy-table load. ``--repeat N`` runs each fleet size N times and prints every run.

The NB201 table is ``$HWNAS_SHARED_DATA/nb201/nb201_tables.csv.gz`` or ``../shared/data/...``
beside the project root.

Run:  ``python -m bench.fleet [--agents 1 4 16 64] [--budget 400] [--repeat 1] [--no-warmup]
[--profile FILE]``
(``--profile`` writes a cProfile of every thread of the server side of the last run.)
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))
from search.config import shared_data_dir  # noqa: E402

#: ``$HWNAS_SHARED_DATA`` or ``../shared/data`` beside the project root.
TABLE = str(shared_data_dir() / "nb201" / "nb201_tables.csv.gz")


def _agent_process(n: int, conn: "mp.connection.Connection", table: str) -> None:
    """Serve ``n`` table-backed agents in this process; send their ports; serve until told to stop."""
    from device_agent.settings import DaemonSettings
    from device_agent.rpc.server import create_server

    cache = tempfile.mkdtemp(prefix="hwnas-fleet-")
    servers = []
    for i in range(n):
        settings = DaemonSettings(host="127.0.0.1", port=0, backend="table", table=table,
                                 metrics=(("latency_ms", "lat_raspi4"),), device_key="bench-table",
                                 cache_dir=f"{cache}/{i}", log_level="error")
        server, port = create_server("127.0.0.1:0", config=settings)
        server.start()
        servers.append((server, port))
    conn.send([p for _, p in servers])
    conn.recv()  # stop
    for server, _ in servers:
        server.shutdown(grace_s=0.5)
    shutil.rmtree(cache, ignore_errors=True)


def start_fleet(n_agents: int, *, processes: int, table: str = TABLE) -> tuple[list[str], list]:
    """Start ``n_agents`` agent servers spread over ``processes`` worker processes."""
    ctx = mp.get_context("spawn")
    procs, addresses = [], []
    per = [n_agents // processes + (1 if i < n_agents % processes else 0) for i in range(processes)]
    for n in filter(None, per):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_agent_process, args=(n, child, table), daemon=True)
        p.start()
        procs.append((p, parent))
    for _, parent in procs:
        addresses += [f"127.0.0.1:{port}" for port in parent.recv()]
    return addresses, procs


def stop_fleet(procs: list) -> None:
    for p, parent in procs:
        parent.send("stop")
    for p, _ in procs:
        p.join(10)
        if p.is_alive():
            p.kill()


class _AllThreadsProfile:
    """cProfile of the calling thread and of every thread started while it is on (``cProfile``
    alone sees one thread; the pool's agent threads do much of the server's work). Times are
    each thread's CPU time (``time.thread_time``), so waiting on a lock or a reply costs nothing."""

    def __init__(self) -> None:
        import cProfile

        self._new = cProfile.Profile
        self.profiles: list = []

    def _hook(self, *_args) -> None:
        prof = self._new(time.thread_time)
        self.profiles.append(prof)
        prof.enable()  # replaces this hook in the new thread

    def __enter__(self) -> "_AllThreadsProfile":
        threading.setprofile(self._hook)
        self._hook()
        return self

    def __exit__(self, *exc) -> None:
        threading.setprofile(None)
        self.profiles[0].disable()

    def dump(self, path: str) -> None:
        import pstats

        stats = pstats.Stats(self.profiles[0])
        for prof in self.profiles[1:]:
            prof.create_stats()
            stats.add(prof)
        stats.dump_stats(path)


def _cpu_s(procs: list) -> float:
    """User + system CPU seconds of the agent worker processes so far."""
    import psutil

    total = 0.0
    for p, _ in procs:
        t = psutil.Process(p.pid).cpu_times()
        total += t.user + t.system
    return total


def run_once(addresses: list[str], budget: int, *, procs: list = (), seed: int = 0,
             profile: str | None = None) -> dict:
    """One search against the fleet; returns its throughput figures."""
    from search import config as cfgmod
    from search.loop.runner import SearchRunner

    cfg = dataclasses.replace(
        cfgmod.SearchConfig(), space="nb201", budget=budget, population_size=32, seed=seed,
        accuracy_table=f"{TABLE}:c10_test_200ep", objectives=("accuracy", "latency_ms"),
    ).validate()
    with tempfile.TemporaryDirectory(prefix="hwnas-fleet-run-") as d:
        runner = SearchRunner(config=cfg, run_dir=Path(d) / "run", agents=addresses, progress=False)
        prof = _AllThreadsProfile() if profile else None
        a0 = _cpu_s(procs)
        c0, t0 = time.process_time(), time.perf_counter()
        if prof is not None:
            with prof:
                summary = runner.run()
        else:
            summary = runner.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        agent_cpu = _cpu_s(procs) - a0
        if prof is not None:
            prof.dump(profile)
    n = summary["done"] + summary["failed"]
    return {"agents": len(addresses), "evaluations": n, "failed": summary["failed"], "wall_s": wall,
            "evals_per_s": n / wall, "cpu_ms_per_eval": 1000 * cpu / n,
            "agent_cpu_ms_per_eval": 1000 * agent_cpu / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--budget", type=int, default=400, help="candidates per run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per fleet size")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="time the first search against a fresh fleet too")
    ap.add_argument("--processes", type=int, default=4, help="agent worker processes (at most)")
    ap.add_argument("--profile", help="write a cProfile (all server threads) of the last run here")
    ap.add_argument("--quick", action="store_true", help="1 and 4 agents, 100 candidates: well under a minute")
    args = ap.parse_args(argv)
    if args.quick:
        args.agents, args.budget = [1, 4], 100
    if not Path(TABLE).is_file():
        print(f"fleet: the NB201 table {TABLE} is not here (set $HWNAS_SHARED_DATA)", file=sys.stderr)
        return 2
    print(f"fleet: NSGA-II on nb201, {args.budget} candidates per run against table-backed loopback agents "
          f"(instant measurements, {args.processes} agent processes at most, {os.cpu_count()} CPUs, "
          f"{'after an untimed warm-up search' if args.warmup else 'no warm-up'}); "
          "evals/s = candidates / wall time of SearchRunner.run; CPU ms/eval = process CPU time / "
          "candidates, server (this process, all threads) and agents (their processes)", flush=True)
    print(f"fleet: {len(args.agents)} fleet sizes x {args.repeat} run(s); expect about "
          f"{len(args.agents) * (args.repeat + args.warmup) * max(2, args.budget // 100) * 2} s on 2 cores "
          "(a line per run as it finishes)", flush=True)
    print(f"{'agents':>6} {'evals':>6} {'failed':>6} {'wall s':>7} {'evals/s':>8} {'server CPU ms/eval':>19} "
          f"{'agent CPU ms/eval':>18}")
    for n in args.agents:
        addresses, procs = start_fleet(n, processes=min(n, args.processes))
        try:
            if args.warmup:  # untimed: imports, agents' thread pools and first calls
                run_once(addresses, max(64, 4 * n), procs=procs, seed=1000)
            for i in range(args.repeat):
                last = n == args.agents[-1] and i == args.repeat - 1
                r = run_once(addresses, args.budget, procs=procs, seed=i,
                             profile=args.profile if last else None)
                print(f"{r['agents']:>6} {r['evaluations']:>6} {r['failed']:>6} {r['wall_s']:>7.2f} "
                      f"{r['evals_per_s']:>8.1f} {r['cpu_ms_per_eval']:>19.2f} "
                      f"{r['agent_cpu_ms_per_eval']:>18.2f}", flush=True)
        finally:
            stop_fleet(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
