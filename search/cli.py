"""``hwnas``: the command line of the search server, its results, and the device agent.

    hwnas search [--config FILE.toml] [--out DIR] [--budget N] [--agent HOST:PORT ...] [--resume DIR]
                 [--token T | --token-file F] [--agent-tls-ca PEM [--agent-tls-cert PEM --agent-tls-key PEM]]
                 [--cost-first] [--rungs 1,3,9 [--eta 3]] [--early-bird] [--inherit-weights]
                 [--accuracy supernet:PATH]
    hwnas supernet train --space mobile --dataset D --out PATH [--phase-epochs ...] [--space-options JSON]
    hwnas results DIR [--json]
    hwnas report DIR [--out DIR]
    hwnas export DIR [--out DIR] [--all] [--agent HOST:PORT [--backend B] [--precision P] [--batch MIN,OPT,MAX]
                 [--calibration N]] [--token T] [--tls-ca PEM ...] [--check-images N] [--min-agreement F]
    hwnas run MANIFEST IMAGE... [--artifact FILE] [--top K] [--json]
    hwnas status DIR [--json]
    hwnas train-final DIR [--top K] [--epochs N] [--id ID ...] [--train-device DEV] [--subset N] [--early-bird]
    hwnas predictor fit DIR --device-key K -o FILE
    hwnas predict FILE MODEL.onnx [--json]
    hwnas agent serve|measure ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from device_agent.cli import add_build_args, add_client_tls_args, build_overrides, client_tls_from_args, read_token


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _token(args: argparse.Namespace) -> str | None:
    """``--token`` or the contents of ``--token-file`` (the file keeps it out of ``ps``)."""
    try:
        return read_token(args.token, args.token_file)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--token-file: {exc}") from None


def _search(args: argparse.Namespace) -> int:
    args.token = _token(args)
    from search import config as cfgmod
    from search.loop.runner import SearchRunner
    from search.loop.setup import resume_config

    if args.resume:
        run_dir = Path(args.resume)
        if args.config:
            raise CLIError("--resume continues with the run's stored config; do not pass --config")
        cfg = resume_config(run_dir, token_given=args.token is not None)
    else:
        cfg = cfgmod.load(args.config)
        run_dir = Path(args.out or "runs/latest")
    overrides: dict[str, Any] = {}
    if args.budget is not None:
        overrides["budget"] = args.budget
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.max_wall_s is not None:
        overrides["max_wall_s"] = args.max_wall_s
    for name in ("space", "algorithm", "dataset", "data_root", "subset", "accuracy_table", "train_workers"):
        v = getattr(args, name)
        if v is not None:
            overrides[name] = v
    train = {k: v for k, v in (("max_epochs", args.max_epochs), ("time_budget_s", args.time_budget_s),
                               ("device", args.train_device), ("executor", args.train_executor),
                               ("ray_address", args.ray_address)) if v is not None}
    if train:
        overrides["train"] = dataclasses.replace(cfg.train, **train)
    top = cfg.space_options.get("max_epochs")
    if args.max_epochs is not None and isinstance(top, int) and top > args.max_epochs > 0:
        # --max-epochs N: the space's epoch gene ends there too (no gene without effect)
        lo = min(cfg.space_options.get("min_epochs", 1), args.max_epochs)
        overrides["space_options"] = {**overrides.get("space_options", cfg.space_options),
                                      "max_epochs": args.max_epochs, "min_epochs": lo}
    if "space" in overrides and overrides["space"] != cfg.space:
        overrides["space_options"] = {}  # the options belonged to the other space
    overrides.update(_cheap_overrides(args, cfg))
    if args.objective:
        overrides["objectives"] = tuple(args.objective)
    if args.constraint:
        overrides["constraints"] = tuple(args.constraint)
    if args.predictor:
        overrides["predictor"] = dataclasses.replace(cfg.predictor, enabled=True)
    # the TLS flags are named like [agents]' fields (and AgentClient's arguments)
    agent_overrides = client_tls_from_args(args, prefix="agent-")
    if args.token is not None:
        agent_overrides["token"] = args.token
    if agent_overrides:
        overrides["agents"] = dataclasses.replace(cfg.agents, **agent_overrides)
    if build_overrides(args):  # --backend/--precision/...: how every candidate is built on the agents
        overrides["build"] = dataclasses.replace(cfg.build, **build_overrides(args))
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides).validate()
    agents = args.agent or None
    runner = SearchRunner(config=cfg, run_dir=run_dir, resume=bool(args.resume), agents=agents,
                          progress=not args.no_progress, progress_every_s=args.progress_every,
                          registry_port=args.registry_port,
                          registry_host=args.registry_host,
                          registry_tls={"cert": args.registry_tls_cert, "key": args.registry_tls_key,
                                        "client_ca": args.registry_tls_client_ca})
    summary = runner.run()
    print(json.dumps(summary, indent=2))
    return 0


def _cheap_overrides(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """Config overrides of the cheap-accuracy flags (issue 11)."""
    out: dict[str, Any] = {}
    if args.cost_first:
        out["cost_first"] = True
    if args.accuracy is not None:
        out["accuracy"] = args.accuracy
    if args.rungs is not None:
        from search.config import FidelitySettings

        try:
            rungs = tuple(int(r) for r in args.rungs.split(",") if r.strip())
        except ValueError:
            raise CLIError(f"--rungs {args.rungs!r}: expected epoch counts such as 1,3,9") from None
        out["fidelity"] = FidelitySettings(rungs=rungs, eta=args.eta or cfg.fidelity.eta)
    train = {k: True for k in ("early_bird", "inherit_weights") if getattr(args, k)}
    if train:
        out["train"] = dataclasses.replace(cfg.train, **train)
    return out


def _supernet(args: argparse.Namespace) -> int:
    from search.training.supernet_cli import run

    try:
        run(args)
    except ValueError as exc:
        raise CLIError(f"supernet train: {exc}") from None
    return 0


def _results(args: argparse.Namespace) -> int:
    from search.reporting.results import collect

    results = collect(args.run_dir)
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=str)
        print()
        return 0
    for r in results:
        flag = "*" if r["pareto"] else " "
        obj = "  ".join(f"{k}={v:.4g}" for k, v in r["objectives"].items())
        tail = obj if r["status"] == "done" else (r["error"] or "")
        if r.get("test_accuracy") is not None:
            tail += f"  test_accuracy={r['test_accuracy']:.4g}"
        if (r.get("final") or {}).get("test_accuracy") is not None:
            tail += f"  final_test_accuracy={r['final']['test_accuracy']:.4g}"
        print(f"{flag} {r['id']:4d} {r['status']:8s} {tail}")
    print("(* = Pareto member; accuracy is the validation split's, test_accuracy measured once after the search)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from search.loop.store import Store
    from search.reporting.report import write_report
    from search.reporting.results import collect, run_objectives

    results = collect(args.run_dir)
    st = Store(args.run_dir, read_only=True)
    objs, _ = run_objectives(st)
    dataset = st.get_meta("dataset")
    st.close()
    out = args.out or str(Path(args.run_dir) / "report")
    path = write_report(results, out, objectives=objs, title=f"hwnas run {Path(args.run_dir).name}",
                        dataset=dataset)
    print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    args.token = _token(args)
    from deploy.data import load_export_data
    from deploy.export import export_candidates
    from search.loop.store import Store
    from search.reporting.recommend import accuracy_floor
    from search.reporting.results import collect, run_objectives

    results = collect(args.run_dir)
    out = args.out or str(Path(args.run_dir) / "export")
    build = build_overrides(args)
    if args.calibration and build.get("precision") not in ("int8", "best"):
        raise CLIError("--calibration N calibrates INT8: give --precision int8 or best")
    if build and not args.agent:
        raise CLIError("--backend/--precision/--batch build on a device: give --agent HOST:PORT")
    try:  # preprocessing, class names, check and test images: the run's dataset
        data = load_export_data(args.run_dir, check_images=args.check_images,
                                calibration_images=args.calibration)
    except (ValueError, OSError) as exc:
        raise CLIError(f"the run's dataset cannot be loaded for the manifest: {exc}") from None
    st = Store(args.run_dir, read_only=True)
    objectives, _ = run_objectives(st)
    floor = 0.0 if args.include_chance else accuracy_floor((st.get_meta("dataset") or {}).get("num_classes"))
    st.close()
    exported = export_candidates(results, args.run_dir, out, only_pareto=not args.all,
                                 agent=args.agent, token=args.token, tls=client_tls_from_args(args),
                                 build=build or None, data=data, objectives=objectives,
                                 min_agreement=args.min_agreement, floor=floor)
    if floor:
        print(f"accuracy floor {floor:.3g} (chance level + 10 points): candidates at or below it are not "
              "exported (--include-chance exports them)", file=sys.stderr)
    for e in exported:
        print(json.dumps(e, default=str))
    # a candidate without its ONNX, or without the artifact the agent was to build, is not exported
    failed = [e for e in exported if e.get("error") or e.get("artifact_error")
              or any(a["output_check"] == "failed" for a in e.get("artifacts", []))]
    print(f"{len(exported) - len(failed)} candidate(s) exported to {out}"
          + (f"; {len(failed)} could not be" if failed else "") + ("" if exported else " (none was chosen)"))
    for e in failed:
        why = e.get("error") or (f"the agent's build failed: {e['artifact_error']}" if e.get("artifact_error")
                                 else "the artifact failed its output check (see its manifest)")
        print(f"hwnas: error: candidate {e['candidate_id']} not exported: {why}", file=sys.stderr)
    return 1 if failed else 0


def _train_final(args: argparse.Namespace) -> int:
    from search.training.final import FinalTrainingError, train_final

    try:
        records = train_final(args.run_dir, top=args.top, epochs=args.epochs, ids=args.id, device=args.train_device,
                              subset=args.subset, early_bird=args.early_bird, prune_ratio=args.prune_ratio)
    except FinalTrainingError as exc:
        raise CLIError(str(exc)) from None
    for r in records:
        s = r["search"]
        print(f"#{r['id']}: {r['epochs']} epochs on {r['device']}: val_accuracy {r['val_accuracy']:.4f}, "
              f"test_accuracy {_num(r['test_accuracy'])} (search: {s['epochs']} epochs, val {_num(s['val_accuracy'])}, "
              f"test {_num(s['test_accuracy'])}); ONNX {r['onnx_path']}")
        eb = r.get("early_bird")
        if eb and eb.get("ticket_params"):
            print(f"  Early-Bird ticket drawn at epoch {eb['drawn_at_epoch']}: {eb['dense_params']:,} -> "
                  f"{eb['ticket_params']:,} parameters; dense phase {eb['dense_phase_s']:.1f} s, ticket "
                  f"{eb['ticket_train_s']:.1f} s (its device costs are not measured)")
        elif eb:
            print(f"  Early-Bird: {eb['note']}")
    return 0


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _status(args: argparse.Namespace) -> int:
    from search.reporting.status import run_status

    st = run_status(args.run_dir)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        from search.reporting.status import format_status

        print(format_status(st))
    return 0


def _version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hwnas")
    except PackageNotFoundError:
        return "0+unknown (not installed)"


def _metric_names() -> str:
    """The metric catalogue's names, for the help of --objective."""
    from search.metrics import CATALOGUE

    return ", ".join(f"{n} ({m.direction})" for n, m in CATALOGUE.items())


def build_parser() -> argparse.ArgumentParser:
    """The ``hwnas`` argument parser (``--space`` and ``--algorithm`` list the registries)."""
    from search.algorithms.base import list_algorithms
    from search.spaces.base import list_spaces

    p = argparse.ArgumentParser(prog="hwnas", description="Hardware-in-the-loop evolutionary NAS.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run (or resume) a search")
    s.add_argument("--config", help="TOML config (default: the embedded digits demo)")
    s.add_argument("--out", help="run directory to create (default runs/latest)")
    s.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR")
    s.add_argument("--budget", type=int, help="candidates to propose in total")
    s.add_argument("--max-wall-s", type=float, metavar="S",
                   help="[search].max_wall_s: propose no new candidate after S seconds of this invocation; "
                        "those in flight finish (0: none, the budget alone ends the search)")
    s.add_argument("--seed", type=int, help="seed of the algorithm, the data splits and training (default 0)")
    s.add_argument("--space", choices=list_spaces(), help="search space (default menndl)")
    s.add_argument("--algorithm", choices=list_algorithms(), help="search algorithm (default nsga2)")
    s.add_argument("--dataset", metavar="NAME[:PATH]",
                   help="what candidates train on: digits (default, embedded), fashion-mnist, cifar10:PATH, "
                        "cifar100:PATH, cinic10:PATH, imagefolder:PATH (local pickle batches, an "
                        "ImageFolder tree or a tar of one)")
    s.add_argument("--data-root", dest="data_root", metavar="DIR", help="folder of torchvision's dataset files")
    s.add_argument("--subset", type=int, metavar="N",
                   help="KIND:PATH datasets: decode a seeded stratified pick of at most N images per split")
    s.add_argument("--max-epochs", type=int, metavar="N", help="[train].max_epochs: the longest training")
    s.add_argument("--time-budget-s", type=float, metavar="S",
                   help="[train].time_budget_s: training seconds per candidate (0: none)")
    s.add_argument("--train-device", metavar="DEV",
                   help="auto (default: cuda when present), cpu, cuda, cuda:N; an absent GPU is an error")
    s.add_argument("--train-workers", dest="train_workers", type=int, metavar="N",
                   help="training worker processes on CPU (cuda: one per visible GPU)")
    s.add_argument("--train-executor", choices=["local", "ray"],
                   help="local worker processes (default) or a Ray cluster (pip install 'hwnas[ray]')")
    s.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray cluster (--train-executor ray)")
    s.add_argument("--accuracy-table", dest="accuracy_table", metavar="CSV:COLUMN",
                   help="use a published accuracy instead of training (e.g. NAS-Bench-201)")
    s.add_argument("--objective", action="append", metavar="[max:|min:]METRIC[@KEY]",
                   help=f"objective (repeatable; default accuracy, latency_ms, params). METRIC is one of: "
                        f"{_metric_names()}; device metrics take @DEVICE_KEY (default: the first agent's)")
    s.add_argument("--constraint", action="append", metavar="EXPR",
                   help="constraint (repeatable), e.g. 'latency_ms <= 5' (same metrics as --objective)")
    s.add_argument("--agent", action="append", metavar="HOST:PORT",
                   help="device agent to measure on (repeatable); none: start one on loopback")
    tok = s.add_mutually_exclusive_group()
    tok.add_argument("--token", help="token the agents expect (visible in `ps`: prefer --token-file)")
    tok.add_argument("--token-file", help="file holding the token the agents expect")
    add_client_tls_args(s, prefix="agent-")
    add_build_args(s)
    s.add_argument("--registry-port", type=int, metavar="P",
                   help="serve the agent registry here (0 = any free port): agents join with --register")
    s.add_argument("--registry-host", default="127.0.0.1", help="registry bind address (default 127.0.0.1)")
    s.add_argument("--registry-tls-cert", metavar="PEM", help="serve the registry over TLS with this certificate")
    s.add_argument("--registry-tls-key", metavar="PEM", help="... and this private key")
    s.add_argument("--registry-tls-client-ca", metavar="PEM",
                   help="registry: require agents' client certificates signed by this CA (mutual TLS)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--predictor", action="store_true",
                   help="profile layers, fit a cost model per device key and screen candidates ([predictor])")
    s.add_argument("--cost-first", action="store_true",
                   help="measure the untrained network first; a constraint violator is never trained")
    s.add_argument("--accuracy", metavar="supernet:PATH",
                   help="accuracy with weights inherited from a trained supernet (mobile space), no training")
    s.add_argument("--rungs", metavar="E1,E2,...", help="fidelity rungs in epochs, e.g. 1,3,9 (successive halving)")
    s.add_argument("--eta", type=int, help="the best 1/eta at a rung are promoted (default 3)")
    s.add_argument("--early-bird", dest="early_bird", action="store_true",
                   help="stop a training once its Early-Bird ticket is drawn")
    s.add_argument("--inherit-weights", dest="inherit_weights", action="store_true",
                   help="a child starts from its parent's trained weights where shapes agree")
    s.add_argument("--progress-every", type=float, default=30.0, metavar="S",
                   help="where stderr is not a terminal: a plain progress line every S seconds (default 30)")
    s.set_defaults(func=_search)

    sn = sub.add_parser("supernet", help="once-for-all supernet for the mobile space")
    snsub = sn.add_subparsers(dest="supernet_command", required=True)
    snt = snsub.add_parser("train", help="train (or resume) a supernet: --space mobile --dataset D --out PATH")
    from search.training.supernet_cli import add_arguments

    add_arguments(snt)
    snt.set_defaults(func=_supernet)

    r = sub.add_parser("results", help="print a run's candidates")
    r.add_argument("run_dir", help="run directory (the --out of the search)")
    r.add_argument("--json", action="store_true", help="the full results list as JSON")
    r.set_defaults(func=_results)

    rp = sub.add_parser("report", help="HTML page and PNG plots of a run")
    rp.add_argument("run_dir", help="run directory (the --out of the search)")
    rp.add_argument("--out", help="folder (default DIR/report)")
    rp.set_defaults(func=_report)

    e = sub.add_parser("export", help="export Pareto members as deployable artifacts")
    e.add_argument("run_dir", help="run directory (the --out of the search)")
    e.add_argument("--out", help="folder (default DIR/export)")
    e.add_argument("--all", action="store_true", help="every finished candidate, not only the Pareto set")
    e.add_argument("--include-chance", action="store_true",
                   help="also export members at chance level (accuracy <= 1/classes + 10 points)")
    e.add_argument("--agent", metavar="HOST:PORT", help="build the engine on this device agent")
    etok = e.add_mutually_exclusive_group()
    etok.add_argument("--token", help="token the agent expects (visible in `ps`: prefer --token-file)")
    etok.add_argument("--token-file", help="file holding the token")
    add_client_tls_args(e)
    add_build_args(e, backends=["onnxruntime", "tensorrt"])
    e.add_argument("--check-images", type=int, default=256, metavar="N",
                   help="validation images the ONNX artifact's output check runs on (default 256)")
    e.add_argument("--calibration", type=int, default=0, metavar="N",
                   help="INT8: send N training images of the run's dataset for TensorRT's calibrator")
    e.add_argument("--min-agreement", type=float, default=0.99, metavar="F",
                   help="top-1 agreement with model.onnx the artifact must reach (default 0.99)")
    e.set_defaults(func=_export)

    tf = sub.add_parser("train-final", help="retrain chosen Pareto members with their full schedule")
    tf.add_argument("run_dir", help="run directory (the --out of the search)")
    tf.add_argument("--top", type=int, metavar="K", help="the K most accurate Pareto members (default: all)")
    tf.add_argument("--id", type=int, action="append", help="this finished candidate (repeatable) instead")
    tf.add_argument("--epochs", type=int, metavar="N", help="epochs for each (default: its genome's)")
    tf.add_argument("--train-device", metavar="DEV", help="auto, cpu, cuda, cuda:N (default: the run's)")
    tf.add_argument("--subset", type=int, metavar="N",
                    help="images per split for this training, 0 = the whole split (default: the search's subset)")
    tf.add_argument("--early-bird", action="store_true",
                    help="draw the Early-Bird ticket, prune to it and train the smaller ticket for the epochs "
                         "left (menndl space; the ticket's device costs are not measured)")
    tf.add_argument("--prune-ratio", type=float, default=0.5, metavar="F",
                    help="share of batch-norm channels the Early-Bird ticket prunes (default 0.5)")
    tf.set_defaults(func=_train_final)

    rn = sub.add_parser("run", help="classify images with an export's manifest.json (see hwnas run -h)",
                        add_help=False)
    rn.add_argument("rest", nargs=argparse.REMAINDER, help="the arguments of hwnas run (see hwnas run -h)")

    st = sub.add_parser("status", help="agents, queue and progress of a run")
    st.add_argument("run_dir", help="run directory (the --out of the search)")
    st.add_argument("--json", action="store_true", help="the status as JSON")
    st.set_defaults(func=_status)

    from search.costmodel.cli import add_parsers as add_predictor_parsers

    add_predictor_parsers(sub)
    from device_agent.cli import add_agent_parser

    add_agent_parser(sub)
    return p


#: Top-level modules of the ``search`` extra; an agent-only install (``pip install hwnas``) lacks them.
_SEARCH_EXTRA = frozenset({"torch", "torchvision", "sklearn", "matplotlib", "tqdm", "pymoo", "moocore", "optuna"})


def _missing_search_extra(exc: ModuleNotFoundError) -> int:
    """One line instead of a traceback when a search command runs in an agent-only install."""
    if (exc.name or "").split(".")[0] not in _SEARCH_EXTRA:
        raise exc
    print(f"hwnas: error: {exc.name} is not installed: the search commands need "
          "pip install 'hwnas[search]' (this install serves `hwnas agent ...`)", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hwnas``; ``hwnas agent ...`` needs only the agent's install (no torch)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:
        from device_agent.cli import main as agent_main

        return agent_main(argv[1:], prog="hwnas agent")
    if argv[:1] == ["run"]:  # the manifest runner: also in an agent-only install
        from deploy.run import main as run_main

        return run_main(argv[1:])
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:
        return _missing_search_extra(exc)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from search.config import ConfigError
    from search.loop.setup import SearchError
    from search.loop.store import StoreError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # before OSError, its base class
        # the reader went away (`hwnas results DIR --json | head`): end quietly, and keep the
        # interpreter's final flush from raising again on the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, ConfigError, SearchError, StoreError, OSError) as exc:  # OSError: a missing file, read-only media
        print(f"hwnas: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        return _missing_search_extra(exc)
    except KeyboardInterrupt:
        if args.command == "search":
            run_dir = args.resume or args.out or "runs/latest"
            print(f"hwnas: interrupted; resume with: hwnas search --resume {run_dir}", file=sys.stderr)
        else:
            print("hwnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
