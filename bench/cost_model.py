"""Benchmark of the layer-wise cost model (issue 12) on this CPU, ONNX Runtime, 1 thread.

Networks are sampled (seeded) from the menndl, nb201 and mobile spaces, exported with
``search.training.exporting.export_onnx`` and measured here with ONNX Runtime *directly*, using the
agent's session settings (``device_agent.backends.onnxruntime_backend.session_options`` with
``BuildConfig(intra_op_threads=1)``: ORT_ENABLE_ALL, sequential, 1 intra-op / 1 inter-op thread)
and the agent's profile aggregation (``aggregate_profile``, 20 profiled runs after one warm-up in
a separate profiling session, as ``device_agent.jobs`` does). The agent's job runner itself is not
used: its child process and >= 1 s timed loop per job would not fit 400 networks x several
rounds into the time budget. Latency = the median over ``--rounds`` interleaved rounds (every
network once per round) of each round's median over ``--iters`` runs. The noise floor is the same
network's two half-rounds' medians compared with the same metrics.

The fit uses ``fit_from_measurements`` (its own 20 % hold-out chooses lasso_poly vs boosting per
layer type); test groups: other networks of the spaces, and torchvision architectures
(weights=None, 64x64 input) that belong to no space. Prints share within +-10 %, MAPE, Spearman.

    PYTHONPATH=$PWD python bench/cost_model.py --quick [--save FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from search.costmodel import (Measurement, extract_layers, fit_from_measurements, map_profile,
                              network_metrics, node_index)

TORCHVISION = ("resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5",
               "squeezenet1_1", "mnasnet0_5", "efficientnet_b0", "regnet_x_400mf", "googlenet",
               "densenet121")


def space_networks(n: int, seed: int, workdir: str) -> list[tuple[str, str]]:
    """``n`` (group, onnx path) drawn round-robin from the three spaces with a seeded RNG."""
    from search.training.exporting import export_onnx
    from search.spaces import TaskSpec, get_space

    rng = random.Random(seed)
    task = TaskSpec(in_channels=3, image_size=32, num_classes=10)
    spaces = {name: get_space(name) for name in ("menndl", "nb201", "mobile")}
    out, seen = [], set()
    while len(out) < n:
        name = ("menndl", "nb201", "mobile")[len(out) % 3]
        space = spaces[name]
        genome = space.sample(rng)
        key = f"{name}:{space.key(genome)}"
        if key in seen:
            continue
        seen.add(key)
        path = os.path.join(workdir, f"{name}_{len(out)}_{seed}.onnx")
        with open(path, "wb") as f:
            f.write(export_onnx(space.build(genome, task), space.input_shape(genome, task)))
        out.append((name, path))
    return out


def torchvision_networks(workdir: str, archs: tuple[str, ...], size: int = 64) -> list[tuple[str, str]]:
    """torchvision architectures, weights=None, ``size`` x ``size`` input, 10 classes."""
    import torchvision

    from search.training.exporting import export_onnx

    out = []
    for arch in archs:
        kw = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
        model = getattr(torchvision.models, arch)(weights=None, num_classes=10, **kw)
        path = os.path.join(workdir, f"tv_{arch}.onnx")
        with open(path, "wb") as f:
            f.write(export_onnx(model, (1, 3, size, size)))
        out.append((f"torchvision:{arch}", path))
    return out


def measure(paths: list[str], *, rounds: int, iters: int) -> tuple[list[float], list[float], list[list[dict]]]:
    """(latency ms, second-half latency ms for the noise floor, profiles) per network."""
    import onnxruntime as ort

    from device_agent.backends.onnxruntime_backend import aggregate_profile, session_options
    from device_agent.config import BuildConfig

    build = BuildConfig(intra_op_threads=1)
    sessions, feeds = [], []
    for p in paths:
        s = ort.InferenceSession(p, sess_options=session_options(build), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal([1, *s.get_inputs()[0].shape[1:]]).astype(np.float32)
        sessions.append(s)
        feeds.append({s.get_inputs()[0].name: x})
        for _ in range(3):
            s.run(None, feeds[-1])
    per_round: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (s, fd) in enumerate(zip(sessions, feeds)):
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, fd)
                ts.append((time.perf_counter() - t0) * 1e3)
            per_round[i].append(statistics.median(ts))
    lat = [statistics.median(r) for r in per_round]
    half = rounds // 2
    first = [statistics.median(r[:half]) for r in per_round]
    second = [statistics.median(r[half:]) for r in per_round]
    profiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for p, fd in zip(paths, feeds):
            so = session_options(build, profile_prefix=os.path.join(tmp, "prof"))
            s = ort.InferenceSession(p, sess_options=so, providers=["CPUExecutionProvider"])
            for _ in range(21):
                s.run(None, fd)
            trace = s.end_profiling()
            with open(trace) as f:
                profiles.append(aggregate_profile(json.load(f), 20))
            os.unlink(trace)
    return lat, list(zip(first, second)), profiles


def report(title: str, meas: list[float], pred: list[float], extra: str = "") -> dict[str, Any]:
    """Print and return the network metrics of one group."""
    m = network_metrics(meas, pred)
    print(f"  {title:28s} n={m['n']:4d}  within+-10%={m['within_10pct']:6.1%}  "
          f"MAPE={m['mape_pct']:6.2f}%  Spearman={m['spearman']:.3f}{extra}")
    return m


def profiled_sums(paths: list[str], profiles: list[list[dict]]) -> list[float]:
    """Sum of the profiled kernel times that map onto ONNX layers, per network."""
    out = []
    for p, prof in zip(paths, profiles):
        mapped, _ = map_profile(node_index(p, extract_layers(p)), prof)
        out.append(sum(mapped.values()))
    return out


def main() -> None:
    """Generate, measure, fit, test; print figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 fit / 30 test networks, 8 torchvision")
    ap.add_argument("--fit", type=int, default=300)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="keep the fitted model in this file")
    ap.add_argument("--cache", help="keep/reuse exported networks and measurements in this folder")
    args = ap.parse_args()
    n_fit, n_test = (60, 30) if args.quick else (args.fit, args.test)
    print(f"load before: {os.getloadavg()}")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="hwnas-costbench-") as tmp:
        wd = args.cache or tmp
        os.makedirs(wd, exist_ok=True)
        cached = os.path.join(wd, f"measured_{n_fit}_{n_test}_{args.seed}.json")
        if os.path.exists(cached):
            with open(cached) as f:
                allnets, lat, halves, profiles = json.load(f)
            print(f"reusing {len(allnets)} networks and their measurements from {cached}")
        else:
            nets = space_networks(n_fit + n_test, args.seed, wd)
            tv = torchvision_networks(wd, TORCHVISION[: 8 if args.quick else None])
            allnets = nets + tv
            print(f"exported {len(allnets)} networks in {time.time() - t0:.0f} s")
            t1 = time.time()
            lat, halves, profiles = measure([p for _, p in allnets], rounds=args.rounds, iters=args.iters)
            print(f"measured in {time.time() - t1:.0f} s ({args.rounds} interleaved rounds x {args.iters} runs)")
            if args.cache:
                with open(cached, "w") as f:
                    json.dump([allnets, lat, halves, profiles], f)
        fit_ms = [Measurement(onnx=p, latency_ms=lat[i], layers=tuple(profiles[i]))
                  for i, (_, p) in enumerate(allnets[:n_fit])]
        t2 = time.time()
        model = fit_from_measurements(fit_ms, device_key="bench-cpu-ort1t")
        print(f"fitted on {n_fit} networks in {time.time() - t2:.0f} s; model {model.model_id}")
        for t, info in sorted(model.metrics["layer_types"].items()):
            errs = ", ".join(f"{k}={v:.3f}" for k, v in info["heldout_wape"].items())
            print(f"  layer type {t:20s} rows={info['rows']:5d} held-out WAPE: {errs or '-'} -> {info['chosen']}")
        if model.interval:
            print(f"  interval (90 %, {model.interval['n']} held-out nets): "
                  f"[{model.interval['low']:+.1%}, {model.interval['high']:+.1%}]")
        preds = [model.predict_layers(extract_layers(p)) for _, p in allnets]
        groups: dict[str, list[int]] = {}
        for i, (g, _) in enumerate(allnets):
            if i < n_fit:
                continue
            groups.setdefault("spaces (all)" if not g.startswith("torchvision") else "torchvision", []).append(i)
            if not g.startswith("torchvision"):
                groups.setdefault(f"  space {g}", []).append(i)
        print("test groups (estimated:%s vs measured):" % model.model_id)
        psum = profiled_sums([p for _, p in allnets], profiles)
        for g, idx in groups.items():
            lay = network_metrics([psum[i] for i in idx], [preds[i]["layer_sum_ms"] for i in idx])
            report(g, [lat[i] for i in idx], [preds[i]["latency_ms"] for i in idx],
                   f"  | layer sum vs profiled sum: MAPE={lay['mape_pct']:.1f}%")
        cov = [i for i in groups.get("spaces (all)", []) if preds[i]["interval_ms"]]
        if cov:
            inside = np.mean([preds[i]["interval_ms"]["low"] <= lat[i] <= preds[i]["interval_ms"]["high"] for i in cov])
            print(f"  interval coverage on test spaces: {inside:.1%} (nominal 90 %)")
        print("torchvision detail:")
        for i, (g, _) in enumerate(allnets):
            if g.startswith("torchvision"):
                p = preds[i]
                print(f"  {g:36s} measured {lat[i]:8.3f} ms  predicted {p['latency_ms']:8.3f} ms  "
                      f"ratio {p['latency_ms'] / lat[i]:.3f}  extrapolated={p['extrapolated']} "
                      f"({len(p['extrapolation'])} flags)")
        report("noise floor (same nets, half vs half)", [a for a, _ in halves], [b for _, b in halves])
        if args.save:
            model.save(args.save)
            print(f"saved {args.save}")
    print(f"total {time.time() - t0:.0f} s; load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
