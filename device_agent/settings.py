"""Settings of the agent daemon (:class:`DaemonSettings`, frozen, loadable from TOML), the one
token reader (:func:`read_token`) and the one loopback rule (:func:`is_loopback`).

File format (every key optional; command-line flags override the file)::

    # agent.toml
    host = "0.0.0.0"
    port = 50051
    token_file = "/etc/hwnas/agent.token"   # or token = "..." (a file keeps it out of `ps`)
    backend = "onnxruntime"                 # default backend when a request names none
    precision = "fp32"                      # default precision when a request names none
    table = "/data/nb201_tables.csv.gz"     # table look-ups: CSV of published measurements
    metrics = { latency_ms = "lat_raspi4" } # table look-ups: metric -> column
    cache_dir = "/var/cache/hwnas-agent"
    cache_size_mb = 4096
    queue_size = 4
    max_model_mb = 512
    tls_cert = "server.pem"
    tls_key = "server.key"
    tls_client_ca = "clients-ca.pem"        # mutual TLS: clients must present a cert from it
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from device_agent.compat import tomllib
from device_agent.config import PRECISIONS, BuildConfig
from device_agent.tables import answers_by_arch_key

#: Largest model-bytes chunk in one message (the client sends chunks of this size).
MAX_CHUNK_BYTES = 1024 * 1024
#: Largest gRPC message either side accepts (a chunk plus the header, with room to spare).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Environment variable holding the token (used by the launcher; keeps it out of argv).
TOKEN_ENV = "HWNAS_AGENT_TOKEN"


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/hwnas-agent`` or ``~/.cache/hwnas-agent``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hwnas-agent")


def is_loopback(host: str) -> bool:
    """True when ``host`` only listens on the loopback interface."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DaemonSettings:
    """Everything the daemon needs; defaults suit a local agent on loopback.

    token: shared secret every Agent RPC must carry (``authorization: Bearer <token>``).
    insecure: allow listening on a non-loopback address without a token or mutual TLS.
    backend: the backend used when a request does not name one; ``table`` answers from
      ``table`` (CSV) with ``metrics`` (metric name -> column).
    precision: the precision used when a request does not name one.
    queue_size: jobs allowed to wait behind the running one (more -> RESOURCE_EXHAUSTED).
    max_model_mb: largest model accepted (INVALID_ARGUMENT above it).
    cache_dir / cache_size_mb: content-addressed store of models and artifacts (LRU).
    drain_grace_s: on SIGTERM, how long the running job may finish before it is cancelled.
    max_job_timeout_s / max_job_memory_mb: the largest limits a request may ask for (a remote
      caller cannot lift the sandbox's time or memory limit beyond these).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    port_file: str | None = None
    token: str | None = field(default=None, repr=False)
    insecure: bool = False
    backend: str = "onnxruntime"
    precision: str = "fp32"
    table: str | None = None
    table_key_column: str = "arch_str"
    metrics: tuple[tuple[str, str], ...] = ()
    cache_dir: str = field(default_factory=default_cache_dir)
    cache_size_mb: int = 2048
    queue_size: int = 4
    max_model_mb: int = 512
    max_tensor_elems: int = 256 * 1024 * 1024
    build_timeout_s: float = 600.0
    max_job_timeout_s: float = 1800.0
    max_job_memory_mb: int = 32768
    drain_grace_s: float = 10.0
    device_key: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        if self.max_model_mb <= 0 or self.cache_size_mb <= 0:
            raise ValueError("max_model_mb and cache_size_mb must be > 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if answers_by_arch_key(self.backend) and not self.table:
            raise ValueError(f"backend {self.backend!r} needs a table (CSV path)")
        if self.table and "latency_ms" not in dict(self.metrics):
            raise ValueError("a table needs the column of latency_ms (--metric latency_ms=COLUMN)")

    @property
    def default_build(self) -> BuildConfig:
        """The build of a request that names no backend or precision (``--backend/--precision``)."""
        return BuildConfig(backend=self.backend, precision=self.precision)

    @property
    def max_model_bytes(self) -> int:
        """``max_model_mb`` in bytes."""
        return self.max_model_mb * 1024 * 1024

    @property
    def tls(self) -> bool:
        """Whether the agent serves TLS."""
        return bool(self.tls_cert)

    @property
    def mutual_tls(self) -> bool:
        """Whether clients must present a certificate."""
        return bool(self.tls_client_ca)

    def check_exposure(self) -> None:
        """Refuse a non-loopback address without authentication unless ``insecure``.

        Raises ``ValueError`` saying what to do.
        """
        if is_loopback(self.host) or self.insecure or self.token or self.mutual_tls:
            return
        raise ValueError(
            f"refusing to listen on {self.host!r} (not loopback) without authentication: give "
            "--token/--token-file (or mutual TLS with --tls-client-ca), or --insecure to accept the risk")

    def with_overrides(self, **changes: Any) -> "DaemonSettings":
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def read_token(token: str | None, token_file: str | None, *, env: str | None = None) -> str | None:
    """The one token reader: ``token``, else the contents of ``token_file`` (which keeps the
    token out of ``ps``), else ``$env`` when ``env`` names a variable (the agent client CLI
    passes :data:`TOKEN_ENV`), else None.

    Strict: a missing, unreadable or empty token file is a ``ValueError`` naming the file.
    """
    if token_file:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read token file {token_file}: {exc.strerror or exc}") from None
        if not text:
            raise ValueError(f"token file {token_file} is empty")
        return text
    if token:
        return token
    return (os.environ.get(env) or None) if env else None


def settings_from_mapping(data: dict[str, Any], *, base: DaemonSettings | None = None) -> DaemonSettings:
    """Settings from a TOML-like mapping on top of ``base`` (unknown keys raise ``ValueError``)."""
    data = dict(data)
    if "token_file" in data:
        token_file = data.pop("token_file")
        if token_file:
            data["token"] = read_token(None, str(token_file))
    if "metrics" in data:
        metrics = data["metrics"]
        if isinstance(metrics, dict):
            data["metrics"] = tuple((str(k), str(v)) for k, v in metrics.items())
        else:
            data["metrics"] = tuple(tuple(m) for m in metrics)  # type: ignore[misc]
    names = {f.name for f in fields(DaemonSettings)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown agent settings: {unknown}")
    return replace(base or DaemonSettings(), **data)


def load_settings(path: str | os.PathLike[str], *, base: DaemonSettings | None = None) -> DaemonSettings:
    """Read a TOML file (format in the module docstring)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if isinstance(data.get("agent"), dict):  # allow an [agent] table too
        data = data["agent"]
    return settings_from_mapping(data, base=base)
