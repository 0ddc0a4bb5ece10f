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
    accuracy_table = ""         # CSV:COLUMN, replaces training by a published accuracy
    train_workers = 1
    torch_threads = 1

    [train]
    max_epochs = 6
    time_budget_s = 20.0
    patience = 2

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

    [predictor]   # issue 12: per-device-key cost model and screening (off by default)
    enabled = false             # on: agents profile layers, a cost model per key is fitted as
                                # measurements arrive, and candidates are screened once it is good
    min_networks = 12           # profiled networks of a key before its first fit (>= 10: held-out)
    refit_every = 6             # refit after this many more
    max_heldout_mape_pct = 15.0 # screen with a key's model only when its held-out MAPE is below
    audit_share = 0.2           # this share of screened candidates is trained and measured anyway
    screen = true               # false: fit and log predictions, never screen
    screen_out_of_range = true  # also screen on predictions with features outside the fit's range
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


@dataclass(frozen=True)
class TrainSettings:
    max_epochs: int = 6
    time_budget_s: float = 20.0
    patience: int = 2


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


@dataclass(frozen=True)
class PredictorConfig:
    """The `[predictor]` section (issue 12): fleet-fitted cost models and screening; see
    :mod:`search.loop.screening`."""

    enabled: bool = False
    min_networks: int = 12
    refit_every: int = 6
    max_heldout_mape_pct: float = 15.0
    audit_share: float = 0.2
    screen: bool = True
    screen_out_of_range: bool = True


#: The measurement settings of the embedded default: short windows so a demo of ~40
#: candidates fits in minutes on 2 cores. A real run uses MeasureConfig's defaults.
DEMO_MEASURE = MeasureConfig(warmup_s=0.1, min_iterations=50, min_duration_s=0.25, max_duration_s=5.0,
                             timeout_s=60.0, memory_limit_mb=2048)


#: Bounds of the MENNDL-style space in the embedded default: small networks and learning rates
#: that train on 8x8 digits in seconds, so a demo on two cores shows a real front.
DEMO_SPACE_OPTIONS: dict[str, Any] = {"max_layers": 6, "max_filters": 48, "min_epochs": 3,
                                      "max_epochs": 8, "lr_range": [0.002, 0.05]}


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
    accuracy_table: str = ""
    train_workers: int = 1
    torch_threads: int = 1
    train: TrainSettings = field(default_factory=TrainSettings)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    measure: MeasureConfig = DEMO_MEASURE
    predictor: PredictorConfig = field(default_factory=PredictorConfig)

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
        if self.population_size < 2:
            raise ConfigError("population_size must be at least 2")
        try:
            self.objective_list()
            self.constraint_list()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        pr = self.predictor
        if pr.min_networks < 10 or pr.refit_every < 1 or not 0.0 <= pr.audit_share <= 1.0:
            raise ConfigError("[predictor]: min_networks >= 10 (a held-out share is needed), "
                              "refit_every >= 1, 0 <= audit_share <= 1")
        if pr.enabled and not self.measure.profile_layers:  # the model learns from the profiles
            return replace(self, measure=replace(self.measure, profile_layers=True))
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
    unknown = sorted(set(data) - {"search", "train", "agents", "build", "measure", "predictor"})
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
            predictor=_section(PredictorConfig, data.get("predictor", {}), "predictor"),
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
    predictor = PredictorConfig(**d.pop("predictor", {}))  # absent in runs stored before issue 12
    return SearchConfig(**d, train=TrainSettings(**train), agents=AgentsConfig(**agents),
                        build=BuildConfig.from_dict(build), measure=MeasureConfig.from_dict(measure),
                        predictor=predictor)
