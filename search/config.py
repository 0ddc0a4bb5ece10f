"""Search configuration: a TOML file (all sections optional) resolved into frozen dataclasses.

File format::

    [search]
    space = "menndl"            # menndl | nb201 | mobile
    space_options = { max_layers = 6 }   # keyword arguments of the space (see its class)
    algorithm = "nsga2"         # nsga2 | random | regevo | optuna-nsga2 | optuna-tpe
    budget = 36                 # candidates proposed in total
    seed = 0
    population_size = 12
    objectives = ["accuracy", "latency_ms", "params"]   # "max:accuracy" forces a direction
    constraints = ["latency_ms <= 5"]
    dataset = "digits"          # digits | fashion-mnist | cifar10 | cifar100 | imagefolder:PATH
    data_root = ""              # where torchvision datasets live
    subset = 0                  # KIND:PATH datasets: decode at most this many images per split (0: all)
    accuracy_table = ""         # CSV:COLUMN, replaces training by a published accuracy
    train_workers = 1           # training worker processes on CPU (cuda: one per visible GPU)
    torch_threads = 1           # torch threads per worker (0: the cores shared out over the workers)

    [train]
    max_epochs = 6              # the longest training; the space's epoch gene stays within it
    time_budget_s = 20.0        # per candidate, seconds (0: none)
    patience = 2                # epochs without a better validation accuracy before stopping
    device = "auto"             # auto (cuda when present) | cpu | cuda | cuda:N; absent = error
    deterministic = false       # cuda: reproducible kernels instead of cudnn autotuning
    executor = "local"          # local (worker processes, one per GPU) | ray
    ray_address = ""            # HOST:PORT of a running Ray cluster (executor = "ray")
    ray_max_retries = 2         # a training whose Ray worker or node is lost runs again this often
    ray_num_cpus = 1.0          # resources each training asks Ray for
    ray_num_gpus = 0.0

    [agents]
    addresses = ["10.0.0.5:50051"]   # none: one local agent is started on loopback
    token = ""
    lease_s = 300.0                  # a leased job not answered by then goes back to the queue
    max_attempts = 3                 # agent losses a job survives before it fails
    max_crashes = 2                  # crashes/hangs before a model is quarantined
    straggler_s = 120.0              # a job held this long is also given to an idle agent of its key (0: never)
    tls_ca = ""                      # CA bundle that verifies the agents (enables TLS)
    tls_cert = ""                    # this server's client certificate (mutual TLS) ...
    tls_key = ""                     # ... and its private key
    tls_server_name = ""             # name in the agents' certificates, if not their host

    [build]    # device_agent.config.BuildConfig fields
    [measure]  # device_agent.config.MeasureConfig fields
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from device_agent.config import BuildConfig, MeasureConfig
from search.objectives import Constraint, Objective


class ConfigError(ValueError):
    """The configuration file or a command-line override is invalid."""


#: where trainings run: local worker processes or tasks on a Ray cluster
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class TrainSettings:
    """The `[train]` section: the training budget, the device and the executor."""

    max_epochs: int = 6
    time_budget_s: float = 20.0
    patience: int = 2
    device: str = "auto"
    deterministic: bool = False
    executor: str = "local"
    ray_address: str = ""
    ray_max_retries: int = 2
    ray_num_cpus: float = 1.0
    ray_num_gpus: float = 0.0

    def validate(self) -> "TrainSettings":
        """Raise :class:`ConfigError` for values no training could use."""
        if self.max_epochs < 1 or self.patience < 1:
            raise ConfigError("[train]: max_epochs and patience must be at least 1")
        if not self.time_budget_s >= 0:
            raise ConfigError(f"[train].time_budget_s must be >= 0 seconds (0: none), got {self.time_budget_s}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"[train].executor {self.executor!r}: known {list(EXECUTORS)}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"[train].device {self.device!r}: auto, cpu, cuda or cuda:N")
        if self.executor == "ray" and self.ray_address and ":" not in self.ray_address:
            raise ConfigError(f"[train].ray_address {self.ray_address!r}: HOST:PORT")
        if self.ray_max_retries < 0 or self.ray_num_cpus < 0 or self.ray_num_gpus < 0:
            raise ConfigError("[train]: ray_max_retries, ray_num_cpus and ray_num_gpus must be >= 0")
        return self

    @property
    def budget_s(self) -> float | None:
        """The per-candidate time budget, None when there is none."""
        return self.time_budget_s or None


@dataclass(frozen=True)
class AgentsConfig:
    """The `[agents]` section: which agents, their token and TLS, and the pool's lease and retry limits."""

    addresses: tuple[str, ...] = ()
    token: str = ""
    lease_s: float = 300.0
    max_attempts: int = 3
    max_crashes: int = 2
    straggler_s: float = 120.0
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""

    def client_tls(self) -> dict[str, str]:
        """The TLS keyword arguments of :class:`device_agent.rpc.client.AgentClient` that are set."""
        opts = {"tls_ca": self.tls_ca, "tls_cert": self.tls_cert, "tls_key": self.tls_key,
                "tls_server_name": self.tls_server_name}
        return {k: v for k, v in opts.items() if v}


#: The measurement settings of the embedded default: short windows so a demo of ~40
#: candidates fits in minutes on 2 cores. A real run uses MeasureConfig's defaults.
DEMO_MEASURE = MeasureConfig(warmup_s=0.1, min_iterations=50, min_duration_s=0.25, max_duration_s=5.0,
                             timeout_s=60.0, memory_limit_mb=2048)


#: Bounds of the MENNDL-style space in the embedded default: small networks and learning rates
#: that train on 8x8 digits in seconds, so a demo on two cores shows a real front.
DEMO_SPACE_OPTIONS: dict[str, Any] = {"max_layers": 6, "max_filters": 48, "min_epochs": 3,
                                      "max_epochs": 6, "lr_range": [0.002, 0.05]}


@dataclass(frozen=True)
class SearchConfig:
    space: str = "menndl"
    space_options: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "nsga2"
    budget: int = 36
    seed: int = 0
    population_size: int = 12
    objectives: tuple[str, ...] = ("accuracy", "latency_ms", "params")
    constraints: tuple[str, ...] = ()
    dataset: str = "digits"
    data_root: str = ""
    subset: int = 0
    accuracy_table: str = ""
    train_workers: int = 1
    torch_threads: int = 1
    train: TrainSettings = field(default_factory=TrainSettings)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    measure: MeasureConfig = DEMO_MEASURE

    def objective_list(self) -> list[Objective]:
        return [Objective.parse(o) for o in self.objectives]

    def constraint_list(self) -> list[Constraint]:
        return [Constraint.parse(c) for c in self.constraints]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_stored(self) -> dict[str, Any]:
        """:meth:`to_dict` without secrets, as the run store keeps it (run folders get copied
        and shared): the agents' token is left out and ``agents.token_set`` says one was used,
        so that ``--resume`` asks for it again."""
        d = self.to_dict()
        d["agents"]["token_set"] = bool(d["agents"]["token"])
        d["agents"]["token"] = ""
        return d

    def validate(self) -> "SearchConfig":
        if self.budget < 1:
            raise ConfigError("budget must be at least 1")
        if self.train_workers < 1:
            raise ConfigError("train_workers must be at least 1")
        if self.subset < 0:
            raise ConfigError("subset must be >= 0 (0: the whole dataset)")
        if self.torch_threads < 0:
            raise ConfigError("torch_threads must be >= 0 (0: the cores shared out over the workers)")
        if not isinstance(self.space_options, dict):
            raise ConfigError("[search].space_options must be a table")
        a = self.agents
        if bool(a.tls_cert) != bool(a.tls_key):
            raise ConfigError("[agents]: tls_cert and tls_key go together (mutual TLS)")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            if getattr(a, name) and not Path(getattr(a, name)).is_file():
                raise ConfigError(f"[agents].{name}: no file {getattr(a, name)!r}")
        if a.straggler_s < 0 or a.lease_s <= 0:
            raise ConfigError("[agents]: lease_s must be > 0 and straggler_s >= 0")
        self.train.validate()
        top = self.space_options.get("max_epochs")
        if isinstance(top, int) and top > self.train.max_epochs:
            raise ConfigError(f"space_options.max_epochs {top} > [train].max_epochs {self.train.max_epochs}: "
                              f"the epoch genes above {self.train.max_epochs} would have no effect")
        if self.population_size < 2:
            raise ConfigError("population_size must be at least 2")
        try:
            self.objective_list()
            self.constraint_list()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return self


def _section(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"[{where}]: unknown keys {unknown}; known: {sorted(names)}")
    return cls(**data)


def from_dict(data: dict[str, Any]) -> SearchConfig:
    """Build a config from the parsed TOML structure."""
    data = dict(data)
    unknown = sorted(set(data) - {"search", "train", "agents", "build", "measure"})
    if unknown:
        raise ConfigError(f"unknown sections {unknown}")
    s = dict(data.get("search", {}))
    for key in ("objectives", "constraints"):
        if key in s:
            if not isinstance(s[key], list):
                raise ConfigError(f"[search].{key} must be a list of strings")
            s[key] = tuple(s[key])
    try:
        cfg = _section(SearchConfig, s, "search")
        agents = dict(data.get("agents", {}))
        if "addresses" in agents:
            agents["addresses"] = tuple(agents["addresses"])
        cfg = replace(
            cfg,
            train=_section(TrainSettings, data.get("train", {}), "train"),
            agents=_section(AgentsConfig, agents, "agents"),
            build=BuildConfig.from_dict(data.get("build")),
            measure=replace(DEMO_MEASURE, **data["measure"]) if "measure" in data else DEMO_MEASURE,
        )
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg.validate()


def load(path: str | Path | None) -> SearchConfig:
    """Read a TOML config (``None``: the embedded default)."""
    if path is None:
        return SearchConfig(space_options=dict(DEMO_SPACE_OPTIONS)).validate()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return from_dict(data)


def needs_token(data: dict[str, Any]) -> bool:
    """Whether the stored config's run used an agent token that was not stored with it."""
    agents = data.get("agents") or {}
    return bool(agents.get("token_set")) and not agents.get("token")


def restore(data: dict[str, Any]) -> SearchConfig:
    """Rebuild a config stored by :meth:`SearchConfig.to_stored` or ``to_dict`` (used by
    ``--resume``); a stored token was left out, see :func:`needs_token`."""
    d = dict(data)
    train, agents, build, measure = d.pop("train"), dict(d.pop("agents")), d.pop("build"), d.pop("measure")
    d["objectives"] = tuple(d["objectives"])
    d["constraints"] = tuple(d["constraints"])
    agents["addresses"] = tuple(agents["addresses"])
    agents.pop("token_set", None)  # see SearchConfig.to_stored
    return SearchConfig(**d, train=TrainSettings(**train), agents=AgentsConfig(**agents),
                        build=BuildConfig.from_dict(build), measure=MeasureConfig.from_dict(measure))
