"""Does the agent measure what a plain ONNX Runtime loop measures? (fidelity benchmark)

For real architectures nobody here wrote (torchvision models built with ``weights=None`` and
exported at a small resolution, and the ``onnx`` wheel's ``backend/test/data/light`` models), the
median latency from a real local agent over gRPC (``device_agent.launcher``; ``--via job``: the
same job path, ``device_agent.core.jobs.run_job``, without gRPC: child process, IOBinding, output
check, timed loop) is compared with a plain ``InferenceSession.run`` timing loop (by default in a
fresh Python process that imports only numpy and onnxruntime, as ``onnxruntime_perf_test`` is a
process of its own; ``--plain-in bench`` runs it in this process, which has torch loaded): same
session options and thread count, rounds interleaved (agent, plain, agent, ...).
Printed per model: the median of each loop's per-round medians, their ratio, and the median of
the per-round paired ratios (``paired``, the figure checked against 0.95-1.05: pairing adjacent
measurements cancels slow changes in machine load), ``best`` = ratio of the fastest round
medians (the least-disturbed rounds on a shared machine), and each loop's median CV. A first
table compares the agent's runner with the plain session alternated iteration by iteration in
one process (``--ab-only``: just that), which isolates the runner from machine-load drift.

``--via plain`` is a control: the plain loop against itself under the same protocol, so the
ratios show what this machine's noise alone does to the comparison.

    nice -n 10 .venv/bin/python -m bench.agent_fidelity [--via agent|job|plain] [--threads 1] [--rounds 5] [--quick]
"""
from __future__ import annotations

import argparse
import atexit
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

TORCHVISION = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
               "shufflenet_v2_x1_0", "squeezenet1_1", "mnasnet1_0", "regnet_y_400mf",
               "googlenet", "densenet121"]
LIGHT = ["squeezenet", "shufflenet", "inception_v1", "resnet50", "zfnet512", "bvlc_alexnet"]


def export_torchvision(name: str, out_dir: str, res: int) -> str:
    """``torchvision.models.<name>(weights=None)`` exported to ONNX at ``res`` x ``res``."""
    import torch
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    path = os.path.join(out_dir, f"tv_{name}.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, res, res), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return path


def light_models() -> dict[str, str]:
    """The ``onnx`` wheel's light model graphs (opset 9, weights from ConstantOfShape)."""
    import onnx

    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    found = {os.path.basename(p)[len("light_"):-len(".onnx")]: p
             for p in glob.glob(os.path.join(root, "light_*.onnx"))}
    return {f"onnx_{k}": found[k] for k in LIGHT if k in found}


def plain_median(path: str, threads: int, *, warmup_s: float, min_iters: int, min_s: float,
                 seed: int = 0) -> tuple[float, float, int]:
    """A plain ORT loop: same session options, ``sess.run`` timed with perf_counter_ns."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in sess.get_inputs()}
    end = time.perf_counter() + warmup_s
    while True:
        sess.run(None, feeds)
        if time.perf_counter() >= end:
            break
    samples: list[float] = []
    start = time.perf_counter_ns()
    while len(samples) < min_iters or time.perf_counter_ns() - start < min_s * 1e9:
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    arr = np.asarray(samples)
    return float(np.median(arr)), float(arr.std(ddof=1) / arr.mean()), len(arr)


_PLAIN_CHILD = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); "
    "from bench.agent_fidelity import plain_median; "
    "print(json.dumps(plain_median(sys.argv[2], int(sys.argv[3]), warmup_s=float(sys.argv[4]), "
    "min_iters=int(sys.argv[5]), min_s=float(sys.argv[6]))))"
)


def plain_median_child(path: str, threads: int, *, warmup_s: float, min_iters: int,
                       min_s: float) -> tuple[float, float, int]:
    """:func:`plain_median` in a fresh interpreter that imports only numpy and onnxruntime."""
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _PLAIN_CHILD, root, path, str(threads), str(warmup_s),
                          str(min_iters), str(min_s)], capture_output=True, text=True, check=True)
    med, cv, n = json.loads(out.stdout.strip().splitlines()[-1])
    return float(med), float(cv), int(n)


def ab_runner_vs_plain(path: str, threads: int, *, min_pairs: int,
                       min_s: float) -> tuple[float, float, float, int]:
    """The agent's own runner (``OrtRunner.timed_run``) and a plain ``sess.run``, alternated
    iteration by iteration in one process, so load changes hit both equally.

    Returns (runner median ms, plain median ms, median of per-pair ratios, pairs).
    """
    import onnxruntime as ort

    from device_agent.backends import get_backend
    from device_agent.backends.onnxruntime_backend import session_options
    from device_agent.config import BuildConfig
    from device_agent.core.measure import make_inputs

    build = BuildConfig(intra_op_threads=threads)
    with tempfile.TemporaryDirectory() as wd:
        runner = get_backend("onnxruntime")().build(path, build, workdir=wd)
        feeds = make_inputs(runner.input_specs, 0)
        runner.prepare(feeds)
        sess = ort.InferenceSession(path, sess_options=session_options(build),
                                    providers=["CPUExecutionProvider"])
        for _ in range(3):
            runner.run()
            sess.run(None, feeds)
        a: list[int] = []
        b: list[int] = []
        clock = time.perf_counter_ns
        start = clock()
        while len(a) < min_pairs or clock() - start < min_s * 1e9:
            first_runner = len(a) % 2 == 0  # alternate the order: no cache/turbo order bias
            t0 = clock()
            runner.timed_run() if first_runner else sess.run(None, feeds)
            t1 = clock()
            sess.run(None, feeds) if first_runner else runner.timed_run()
            t2 = clock()
            a.append(t1 - t0 if first_runner else t2 - t1)
            b.append(t2 - t1 if first_runner else t1 - t0)
        runner.close()
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.median(pa)) / 1e6, float(np.median(pb)) / 1e6, float(np.median(pa / pb)), len(a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for both loops")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved agent/plain rounds per model")
    ap.add_argument("--res", type=int, default=64, help="torchvision export resolution")
    ap.add_argument("--min-iters", type=int, default=30)
    ap.add_argument("--min-s", type=float, default=0.5)
    ap.add_argument("--via", choices=["agent", "job", "plain"], default="agent",
                    help="agent: a real local agent over gRPC; job: run_job in this process; plain: a "
                         "second plain loop in place of the agent (control: the machine's noise floor)")
    ap.add_argument("--ab-only", action="store_true",
                    help="only the in-process runner-vs-plain A/B table (fast, noise-robust)")
    ap.add_argument("--plain-in", choices=["child", "bench"], default="child",
                    help="child: the plain loop in a fresh interpreter (numpy + onnxruntime only); "
                         "bench: in this process (torch loaded)")
    ap.add_argument("--quick", action="store_true", help="4 torchvision + 4 light models")
    args = ap.parse_args(argv)

    from device_agent.config import BuildConfig, MeasureConfig

    tmp = tempfile.mkdtemp(prefix="hwnas-fidelity-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the exported models
    tv = TORCHVISION[:4] if args.quick else TORCHVISION
    models: dict[str, str] = {}
    for name in tv:
        models[f"tv_{name}@{args.res}"] = export_torchvision(name, tmp, args.res)
    light = light_models()
    models.update(dict(list(light.items())[:4]) if args.quick else light)

    ab = []
    if args.via != "plain":
        print(f"A/B in one process, the agent's OrtRunner vs plain sess.run alternated per iteration "
              f"(threads={args.threads}):", flush=True)
        print(f"{'model':28s} {'runner ms':>9s} {'plain ms':>9s} {'ratio':>6s} {'paired':>6s} {'pairs':>6s}",
              flush=True)
    for label, path in (models.items() if args.via != "plain" else ()):
        a, p, paired, n = ab_runner_vs_plain(path, args.threads, min_pairs=40, min_s=args.min_s * 4)
        ab.append(paired)
        print(f"{label:28s} {a:9.3f} {p:9.3f} {a / p:6.3f} {paired:6.3f} {n:6d}", flush=True)
    if ab:
        print(f"A/B: {sum(0.95 <= r <= 1.05 for r in ab)}/{len(ab)} paired ratios within 0.95-1.05; "
              f"median {statistics.median(ab):.3f}\n", flush=True)
    if args.ab_only:
        return 0 if all(0.95 <= r <= 1.05 for r in ab) else 1

    build = BuildConfig(intra_op_threads=args.threads)
    # cv_threshold high: the re-measure pass only doubles the time; both loops use one pass.
    measure = MeasureConfig(warmup_s=0.3, min_iterations=args.min_iters, min_duration_s=args.min_s,
                            cv_threshold=1.0, energy=False, timeout_s=300)
    agent, client = None, None
    if args.via == "agent":
        from device_agent.rpc.client import AgentClient
        from device_agent.launcher import start_local_agent

        agent = start_local_agent()
        client = AgentClient(agent.address, token=agent.token)
        blobs = {label: open(path, "rb").read() for label, path in models.items()}

        def measure_agent(label: str, path: str, job_id: str):
            return client.measure(blobs[label], job_id=job_id, build=build, measure=measure)
        how = f"a local agent over gRPC at {agent.address} (device_agent.launcher)"
    elif args.via == "plain":
        from types import SimpleNamespace

        def measure_agent(label: str, path: str, job_id: str):
            med, cv, _ = plain_median_child(path, args.threads, warmup_s=measure.warmup_s,
                                            min_iters=args.min_iters, min_s=args.min_s)
            return SimpleNamespace(ok=True, latency_ms=SimpleNamespace(median=med, cv=cv), output_check=None)
        how = "CONTROL: the same plain loop in another fresh interpreter (not the agent)"
    else:
        from device_agent.core.jobs import run_job

        def measure_agent(label: str, path: str, job_id: str):
            return run_job(path, build, measure, job_id=job_id, device_key="fidelity")
        how = "device_agent.core.jobs.run_job (child process)"
    try:
        return _compare(models, args, build, measure, measure_agent, how)
    finally:
        if client is not None:
            client.close()
        if agent is not None:
            agent.stop()


def _compare(models, args, build, measure, measure_agent, how) -> int:
    plain_fn = plain_median_child if args.plain_in == "child" else plain_median
    where = "a fresh interpreter" if args.plain_in == "child" else "this process"
    print(f"agent path: {how}; plain: InferenceSession.run in {where}; "
          f"threads={args.threads}, rounds={args.rounds}, >= {args.min_iters} it and >= {args.min_s} s each",
          flush=True)
    head = (f"{'model':28s} {'agent ms':>9s} {'plain ms':>9s} {'ratio':>6s} {'paired':>6s} "
            f"{'best':>6s} {'agentCV':>8s} {'plainCV':>8s} {'out.chk':>8s}")
    print(head, flush=True)
    rows = []
    for label, path in models.items():
        agent_m, plain_m, agent_cv, plain_cv, err, chk = [], [], [], [], None, ""
        for r in range(args.rounds):
            # alternate which loop goes first so a slow drift in machine load cancels out
            for which in (("agent", "plain") if r % 2 == 0 else ("plain", "agent")):
                if which == "plain":
                    med, cv, _ = plain_fn(path, args.threads, warmup_s=measure.warmup_s,
                                              min_iters=args.min_iters, min_s=args.min_s)
                    plain_m.append(med)
                    plain_cv.append(cv)
                    continue
                res = measure_agent(label, path, f"{label}-{r}")
                if not res.ok:
                    err = f"{res.error_kind}: {res.error[:120]}"
                    break
                agent_m.append(res.latency_ms.median)
                agent_cv.append(res.latency_ms.cv)
                chk = f"{res.output_check['max_abs_diff']:.1e}" if res.output_check else "-"
            if err:
                break
        if err:
            print(f"{label:28s} agent error {err}", flush=True)
            rows.append((label, None))
            continue
        a, p = statistics.median(agent_m), statistics.median(plain_m)
        paired = statistics.median(x / y for x, y in zip(agent_m, plain_m))
        best = min(agent_m) / min(plain_m)
        rows.append((label, paired))
        print(f"{label:28s} {a:9.3f} {p:9.3f} {a / p:6.3f} {paired:6.3f} {best:6.3f} "
              f"{statistics.median(agent_cv):8.3f} "
              f"{statistics.median(plain_cv):8.3f} {chk:>8s}", flush=True)
    ratios = [r for _, r in rows if r is not None]
    inside = sum(0.95 <= r <= 1.05 for r in ratios)
    print(f"{len(ratios)}/{len(rows)} models measured; {inside}/{len(ratios)} ratios within 0.95-1.05; "
          f"median ratio {statistics.median(ratios):.3f}" if ratios else "no model measured")
    return 0 if ratios and inside == len(ratios) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
