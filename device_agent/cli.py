"""Command line of the device agent: ``serve``, ``measure``, ``describe``.

``python -m device_agent serve ...`` (or ``hwnas agent serve ...``) runs the daemon;
``measure``/``describe`` talk to a running agent. ``add_agent_parser(subparsers)`` adds the
``agent`` command to another parser (the search's ``hwnas`` CLI); every command sets ``func``.
Settings precedence: defaults < ``--config`` TOML < ``HWNAS_AGENT_TOKEN`` < flags.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from device_agent.settings import TOKEN_ENV, DaemonSettings, load_settings, read_token
from device_agent.backends.base import BACKENDS
from device_agent.tables import table_names


def _metric(text: str) -> tuple[str, str]:
    name, sep, column = text.partition("=")
    if not sep or not name or not column:
        raise argparse.ArgumentTypeError(f"expected METRIC=COLUMN, got {text!r}")
    return name.strip(), column.strip()


def add_build_args(p: argparse.ArgumentParser, *, backends: Sequence[str] | None = None) -> None:
    """``--backend --precision --execution-provider --batch``: how the agent builds the model
    (``build_from_args`` turns them into a :class:`device_agent.config.BuildConfig`)."""
    from device_agent.config import PRECISIONS

    p.add_argument("--backend", choices=list(backends) if backends else None,
                   help="onnxruntime or tensorrt (default: the agent's --backend)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="requested precision; a build that does not obtain it fails (default fp32)")
    p.add_argument("--execution-provider", choices=["cpu", "cuda", "tensorrt"],
                   help="onnxruntime's execution provider (default cpu)")
    p.add_argument("--batch", type=_batch_profile, metavar="MIN,OPT,MAX",
                   help="TensorRT optimization profile of a dynamic batch dimension")


def _batch_profile(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX (three integers), got {text!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= OPT <= MAX, got {text!r}")
    return lo, opt, hi


def build_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`BuildConfig` fields given by :func:`add_build_args`' flags (absent: not set)."""
    out: dict[str, Any] = {}
    for name in ("backend", "precision", "execution_provider"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    if getattr(args, "batch", None) is not None:
        out["batch_min"], out["batch_opt"], out["batch_max"] = args.batch
    return out


#: the client-side TLS flags: option name, metavar, help ({peer}: what is dialled)
_CLIENT_TLS_FLAGS = (
    ("ca", "PEM", "CA bundle that verifies the {peer} (enables TLS)"),
    ("cert", "PEM", "client certificate for the {peer} (mutual TLS)"),
    ("key", "PEM", "client private key (mutual TLS)"),
    ("server_name", "NAME", "name in the {peer}'s certificate, if not its host"),
)


def add_client_tls_args(p: argparse.ArgumentParser, *, prefix: str = "", peer: str = "agent") -> None:
    """``--{prefix}tls-ca/-cert/-key/-server-name``: how a client dials ``peer`` over TLS."""
    for name, metavar, text in _CLIENT_TLS_FLAGS:
        p.add_argument(f"--{prefix}tls-{name.replace('_', '-')}", metavar=metavar, help=text.format(peer=peer))


def client_tls_from_args(args: argparse.Namespace, *, prefix: str = "") -> dict[str, str]:
    """The flags of :func:`add_client_tls_args` that are set, as the keyword arguments of
    :class:`device_agent.rpc.client.AgentClient` / :func:`device_agent.rpc.auth.client_channel`."""
    dest = prefix.replace("-", "_")
    tls = {f"tls_{name}": getattr(args, f"{dest}tls_{name}", None) for name, *_ in _CLIENT_TLS_FLAGS}
    return {k: v for k, v in tls.items() if v}


def _client_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", help=f"agent token (default: ${TOKEN_ENV})")
    p.add_argument("--token-file", help="read the token from this file")
    add_client_tls_args(p)
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of short calls (s)")


def _add_commands(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the agent daemon on this device")
    s.add_argument("--config", help="TOML settings file (flags override it)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (0 = any free port; default 50051)")
    s.add_argument("--port-file", help="write the bound port to this file once serving")
    s.add_argument("--parent-fd", type=int, metavar="FD",
                   help="exit when this inherited pipe reaches end-of-file (its parent ended); "
                        "the search's local agent gets one")
    tok = s.add_mutually_exclusive_group()
    tok.add_argument("--token", help=f"shared token (visible in `ps`: prefer --token-file or ${TOKEN_ENV})")
    tok.add_argument("--token-file", help="file holding the shared token")
    s.add_argument("--insecure", action="store_true", default=None,
                   help="allow a non-loopback address without token or mutual TLS")
    s.add_argument("--backend", choices=[*BACKENDS.names(), *table_names()],
                   help="backend for requests; 'table' answers every request from --table")
    s.add_argument("--precision", choices=["fp32", "fp16", "int8", "best"],
                   help="precision for requests that name none (default fp32)")
    s.add_argument("--table", help="CSV (.csv or .csv.gz) of published measurements (table backend)")
    s.add_argument("--table-key-column", help="column holding the arch key (default arch_str)")
    s.add_argument("--metric", action="append", type=_metric, metavar="METRIC=COLUMN[:KIND]",
                   help="table backend: metric from a column, e.g. latency_ms=lat_raspi4 (repeat); "
                        "KIND is published (default: a benchmark's measurement) or simulated "
                        "(latency_ms=lat_eyeriss:simulated)")
    s.add_argument("--cache-dir", help="model/artifact cache folder")
    s.add_argument("--cache-size-mb", type=int, help="cache size limit (LRU eviction)")
    s.add_argument("--queue-size", type=int, help="jobs that may wait behind the running one")
    s.add_argument("--max-model-mb", type=int, help="largest model accepted")
    s.add_argument("--device-key", help="override the detected device key")
    s.add_argument("--drain-grace-s", type=float, help="on SIGTERM, time the running job may finish")
    s.add_argument("--max-job-timeout-s", type=float, help="largest job timeout a request may ask for")
    s.add_argument("--max-job-memory-mb", type=int, help="largest job memory limit a request may ask for")
    s.add_argument("--tls-cert", help="server certificate (PEM): serve TLS")
    s.add_argument("--tls-key", help="server private key (PEM)")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.add_argument("--register", metavar="SERVER:PORT",
                   help="join the search whose registry listens here (hwnas search --registry-port)")
    s.add_argument("--advertise", metavar="HOST:PORT",
                   help="with --register: the address the search server dials (default: bound host:port)")
    add_client_tls_args(s, prefix="register-", peer="registry")  # with --register
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("measure", help="measure an ONNX model on a running agent")
    m.add_argument("model", help="ONNX file")
    m.add_argument("--agent", required=True, metavar="HOST:PORT")
    _client_tls_args(m)
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    add_build_args(m)
    m.add_argument("--iterations", type=int, help="minimum timed iterations")
    m.add_argument("--duration", type=float, help="minimum timed duration (s)")
    m.add_argument("--threads", type=int, help="intra-op threads")
    m.add_argument("--arch-key", help="architecture key (table backend)")
    m.add_argument("--profile", action="store_true", help="per-layer profile")
    m.set_defaults(func=cmd_measure)

    d = sub.add_parser("describe", help="describe a running agent's device")
    d.add_argument("--agent", required=True, metavar="HOST:PORT")
    _client_tls_args(d)
    d.set_defaults(func=cmd_describe)


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``agent {serve,measure,describe}`` to ``subparsers`` (self-contained: sets ``func``)."""
    a = subparsers.add_parser("agent", help="run or talk to a device agent")
    sub = a.add_subparsers(dest="agent_command", metavar="{serve,measure,describe}", required=True)
    _add_commands(sub)
    return a


def settings_from_args(args: argparse.Namespace) -> DaemonSettings:
    """Defaults < ``--config`` < ``$HWNAS_AGENT_TOKEN`` < flags."""
    settings = load_settings(args.config) if args.config else DaemonSettings()
    if os.environ.get(TOKEN_ENV):
        settings = replace(settings, token=os.environ[TOKEN_ENV])
    token = read_token(args.token, args.token_file)
    metrics = tuple(args.metric) if args.metric else None
    return settings.with_overrides(
        host=args.host, port=args.port, port_file=args.port_file, token=token,
        insecure=args.insecure, backend=args.backend, precision=args.precision, table=args.table,
        table_key_column=args.table_key_column, metrics=metrics, cache_dir=args.cache_dir,
        cache_size_mb=args.cache_size_mb, queue_size=args.queue_size, max_model_mb=args.max_model_mb,
        device_key=args.device_key, drain_grace_s=args.drain_grace_s,
        max_job_timeout_s=args.max_job_timeout_s, max_job_memory_mb=args.max_job_memory_mb, tls_cert=args.tls_cert,
        tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, log_level=args.log_level)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    from device_agent.rpc.server import serve

    if getattr(args, "parent_fd", None) is not None:
        from device_agent.launcher import watch_parent

        try:
            os.fstat(args.parent_fd)
        except OSError as exc:
            print(f"agent: error: --parent-fd {args.parent_fd}: {exc.strerror}", file=sys.stderr)
            return 2
        watch_parent(args.parent_fd)
    try:
        settings = settings_from_args(args)
        settings.check_exposure()
        if getattr(args, "register", None):
            from device_agent.rpc.registration import serve_registered

            tls = client_tls_from_args(args, prefix="register-")
            if bool(tls.get("tls_cert")) != bool(tls.get("tls_key")):
                raise ValueError("--register-tls-cert and --register-tls-key go together")
            return serve_registered(settings, registry=args.register, advertise=args.advertise, registry_tls=tls)
        return serve(settings)
    except (ValueError, OSError, RuntimeError) as exc:  # bad settings, table or certs; cannot bind
        print(f"agent: error: {exc}", file=sys.stderr)
        return 2


def _client(args: argparse.Namespace) -> Any:
    from device_agent.rpc.client import AgentClient

    token = read_token(args.token, args.token_file, env=TOKEN_ENV)
    return AgentClient(args.agent, token=token, timeout=args.timeout, **client_tls_from_args(args))


def _summary(r: Any) -> str:
    lines = [f"job {r.job_id} on {r.device_key} ({r.backend}), model {r.model_sha256[:12]}"]
    if r.error is not None:
        lines.append(f"FAILED [{r.error_kind}]: {r.error}")
        return "\n".join(lines)
    lat = r.latency_ms
    if lat is not None:
        lines.append(f"latency  median {lat.median:.4f} ms  (95% CI {lat.ci_low:.4f}-{lat.ci_high:.4f}), "
                     f"p90 {lat.p90:.4f}, p99 {lat.p99:.4f}, min {lat.min:.4f}, max {lat.max:.4f}, "
                     f"cv {lat.cv:.3%}, n={lat.count}  [{lat.method}]")
    if r.peak_memory_mb is not None:
        v = r.peak_memory_mb.value
        lines.append(f"memory   {'n/a' if v is None else f'{v:.1f} MB'}  "
                     f"({r.peak_memory_mb.status}: {r.peak_memory_mb.method})")
    if r.energy is not None:
        e = r.energy
        val = "n/a" if e.value_mj is None else f"{e.value_mj:.4f} mJ/inference"
        lines.append(f"energy   {val}  ({e.status}: {e.method})")
    if r.output_check:
        lines.append(f"outputs  {json.dumps(r.output_check, default=str)[:200]}")
    if r.flags:
        lines.append(f"flags    {', '.join(r.flags)}")
    return "\n".join(lines)


def cmd_measure(args: argparse.Namespace) -> int:
    """Send a model to an agent and print the result (exit 1 if the candidate failed)."""
    from device_agent.config import BuildConfig, MeasureConfig
    from device_agent.errors import AgentError

    model = Path(args.model).read_bytes()
    mc: dict[str, Any] = {"profile_layers": args.profile}
    if args.iterations is not None:
        mc["min_iterations"] = args.iterations
    if args.duration is not None:
        mc["min_duration_s"] = args.duration
    bc = build_overrides(args)  # unset fields: the agent's defaults (agent serve --backend/--precision)
    if args.threads is not None:
        bc["intra_op_threads"] = args.threads
    try:
        with _client(args) as client:
            result = client.measure(model, job_id=f"cli-{uuid.uuid4().hex[:8]}",
                                    build=BuildConfig(**bc), measure=MeasureConfig(**mc),
                                    arch_key=args.arch_key)
    except (AgentError, ValueError) as exc:  # ValueError: a bad token file
        print(f"agent: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2, default=str) if args.json else _summary(result))
    return 0 if result.ok else 1


def cmd_describe(args: argparse.Namespace) -> int:
    """Print the agent's device description as JSON."""
    from device_agent.errors import AgentError

    try:
        with _client(args) as client:
            print(json.dumps(client.describe(), indent=2, default=str))
    except (AgentError, ValueError) as exc:  # ValueError: a bad token file
        print(f"agent: error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser(prog: str = "python -m device_agent") -> argparse.ArgumentParser:
    """The parser of ``python -m device_agent`` (also ``hwnas-agent`` and ``hwnas agent``)."""
    p = argparse.ArgumentParser(prog=prog, description="hwnas device agent")
    sub = p.add_subparsers(dest="command", metavar="{serve,measure,describe}", required=True)
    _add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m device_agent") -> int:
    """Entry point of ``python -m device_agent``, ``hwnas-agent`` and ``hwnas agent``."""
    args = build_parser(prog).parse_args(argv)
    return int(args.func(args) or 0)
