"""Search configuration: a TOML file (all sections optional) resolved into frozen dataclasses.

File format::

    [search]
    space = "menndl"            # menndl | nb201 | mobile
    space_options = { max_layers = 6 }   # keyword arguments of the space (see its class)
    algorithm = "nsga2"         # nsga2 | random | regevo | optuna-nsga2 | optuna-tpe
    budget = 36                 # candidates proposed in total
    max_wall_s = 0              # no new candidate after this many seconds of this invocation (0: none)
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
    cost_first = false          # export the untrained network, measure it, never train a violator
    accuracy = ""               # "" (train) | "supernet:PATH" (inherited weights, mobile space)

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
    early_bird = false          # stop a training once its Early-Bird ticket is drawn
    early_bird_window = 5       # ... the last N mask distances all below early_bird_eps
    early_bird_eps = 0.1
    inherit_weights = false     # a child starts from its parent's trained weights where shapes agree

    [fidelity]                  # asynchronous successive halving (off: rungs = [])
    rungs = [1, 3, 9]           # epochs at each rung
    eta = 3                     # the best 1/eta at a rung go on to the next

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
    min_heldout = 8             # ... measured on at least this many held-out networks
    audit_share = 0.2           # this share of screened candidates is trained and measured anyway
    screen = true               # false: fit and log predictions, never screen
    screen_out_of_range = true  # also screen on predictions with features outside the fit's range
"""
from __future__ import annotations

import math
import os
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from device_agent.compat import tomllib
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
    early_bird: bool = False
    early_bird_window: int = 5
    early_bird_eps: float = 0.1
    inherit_weights: bool = False

    def validate(self) -> "TrainSettings":
        """Raise :class:`ConfigError` for values no training could use."""
        # the numbers' ranges are checked with every other section's (_RANGES)
        if self.executor not in EXECUTORS:
            raise ConfigError(f"[train].executor {self.executor!r}: known {list(EXECUTORS)}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"[train].device {self.device!r}: auto, cpu, cuda or cuda:N")
        if self.executor == "ray" and self.ray_address and ":" not in self.ray_address:
            raise ConfigError(f"[train].ray_address {self.ray_address!r}: HOST:PORT")
        return self

    @property
    def budget_s(self) -> float | None:
        """The per-candidate time budget, None when there is none."""
        return self.time_budget_s or None


@dataclass(frozen=True)
class FidelitySettings:
    """The `[fidelity]` section: rung budgets in epochs (ascending; empty: off) and eta."""

    rungs: tuple[int, ...] = ()
    eta: int = 3

    @property
    def enabled(self) -> bool:
        """Whether candidates climb rungs (more than one rung)."""
        return len(self.rungs) > 1


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
    screen: bool = True
    screen_out_of_range: bool = True
    min_networks: int = 12
    refit_every: int = 6
    max_heldout_mape_pct: float = 15.0
    #: held-out networks the MAPE above must rest on before screening starts (a MAPE over two
    #: networks, as the first fit on a dozen has, says little about the next hundred)
    min_heldout: int = 8
    audit_share: float = 0.2


#: The measurement settings of the embedded default (``hwnas search`` without ``--config``):
#: short windows so a demo of ~40 candidates fits in minutes on 2 cores. A TOML config starts
#: from MeasureConfig's documented defaults (docs/measurement.md); its [measure] overrides them.
DEMO_MEASURE = MeasureConfig(warmup_s=0.1, min_iterations=50, min_duration_s=0.25, max_duration_s=5.0,
                             timeout_s=60.0, memory_limit_mb=2048)


#: Bounds of the MENNDL-style space in the embedded default: networks from a few hundred to
#: ~100k parameters, and learning rates and epochs that train every one of them on 8x8 digits
#: to convergence in seconds. Undertrained networks hide the MENNDL effect (the most accurate
#: network wins by training length, not by architecture), so the demo trains each one fully.
DEMO_SPACE_OPTIONS: dict[str, Any] = {"max_layers": 5, "max_filters": 64, "min_epochs": 10,
                                      "max_epochs": 16, "lr_range": [0.003, 0.02]}

#: Candidates of the embedded default: enough for NSGA-II (population 16) to fill the front
#: between a few hundred and ~100k parameters in about 5 minutes on two loaded cores.
DEMO_BUDGET = 48

#: Training limits of the embedded default (the genome's epochs are capped by ``max_epochs``).
DEMO_TRAIN = TrainSettings(max_epochs=16, time_budget_s=40.0, patience=5)


@dataclass(frozen=True)
class SearchConfig:
    space: str = "menndl"
    space_options: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "nsga2"
    budget: int = 36
    max_wall_s: float = 0.0
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
    cost_first: bool = False
    accuracy: str = ""
    train: TrainSettings = field(default_factory=TrainSettings)
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
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
        """Every setting's type and range, names, files; ``ConfigError`` naming the key."""
        from search.algorithms.base import list_algorithms
        from search.spaces.base import list_spaces

        _check_ranges(self)
        if not isinstance(self.space_options, dict):
            raise ConfigError("[search].space_options must be a table")
        if self.space not in list_spaces():
            raise ConfigError(f"[search].space: unknown space {self.space!r}; known: {', '.join(list_spaces())}")
        if self.algorithm not in list_algorithms():
            raise ConfigError(f"[search].algorithm: unknown algorithm {self.algorithm!r}; "
                              f"known: {', '.join(list_algorithms())}")
        a = self.agents
        if bool(a.tls_cert) != bool(a.tls_key):
            raise ConfigError("[agents]: tls_cert and tls_key go together (mutual TLS)")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            if getattr(a, name) and not Path(getattr(a, name)).is_file():
                raise ConfigError(f"[agents].{name}: no file {getattr(a, name)!r}")
        if self.measure.min_duration_s > self.measure.max_duration_s:
            raise ConfigError("[measure]: min_duration_s must not exceed max_duration_s")
        self.train.validate()
        f = self.fidelity
        if f.rungs and (list(f.rungs) != sorted(set(f.rungs)) or f.rungs[0] < 1 or f.eta < 2):
            raise ConfigError("[fidelity]: rungs must be ascending distinct epoch counts >= 1 and eta >= 2")
        if self.accuracy and not self.accuracy.startswith("supernet:"):
            raise ConfigError(f"accuracy {self.accuracy!r}: expected '' (train) or 'supernet:PATH'")
        if self.train.early_bird_window < 1 or self.train.early_bird_eps <= 0:
            raise ConfigError("[train]: early_bird_window must be >= 1 and early_bird_eps > 0")
        try:
            self.objective_list()
            self.constraint_list()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        pr = self.predictor
        if pr.min_networks < 10 or pr.refit_every < 1 or not 0.0 <= pr.audit_share <= 1.0 or pr.min_heldout < 1:
            raise ConfigError("[predictor]: min_networks >= 10 (a held-out share is needed), "
                              "refit_every >= 1, 0 <= audit_share <= 1, min_heldout >= 1")
        if pr.enabled and not self.measure.profile_layers:  # the model learns from the profiles
            return replace(self, measure=replace(self.measure, profile_layers=True))
        return self


def _type_ok(value: Any, want: Any) -> bool:
    """Whether a TOML value has the field's type (an integer is a float; a bool is neither)."""
    origin = typing.get_origin(want) or want
    if isinstance(value, bool) and origin is not bool:
        return False
    if origin is float:
        return isinstance(value, (int, float))
    if origin is tuple:
        item = (typing.get_args(want) or (Any,))[0]
        return isinstance(value, (list, tuple)) and all(item is Any or isinstance(v, item) for v in value)
    return origin is Any or isinstance(value, origin)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               tuple: "a list of strings", dict: "a table"}


def check_types(cls: type, data: dict[str, Any], where: str) -> None:
    """Every key of a TOML section ``[where]`` is a field of ``cls`` with the field's type;
    otherwise one :class:`ConfigError` naming the key."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"[{where}]: unknown keys {unknown}; known: {sorted(hints)}")
    for key, value in data.items():
        want = hints[key]
        if not _type_ok(value, want):
            name = _TYPE_NAMES.get(typing.get_origin(want) or want, str(want))
            raise ConfigError(f"[{where}].{key} must be {name}, got {value!r}")


def _section(cls: type, data: dict[str, Any], where: str) -> Any:
    check_types(cls, data, where)
    return cls(**data)


#: (section, key) -> (low, high) closed range of every numeric setting (None: unbounded)
_RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("search", "budget"): (1, None), ("search", "max_wall_s"): (0, None), ("search", "seed"): (0, 2**32 - 1), ("search", "population_size"): (2, None),
    ("search", "train_workers"): (1, 256), ("search", "torch_threads"): (0, 1024), ("search", "subset"): (0, None),
    ("train", "max_epochs"): (1, None), ("train", "time_budget_s"): (0, None), ("train", "patience"): (1, None),
    ("train", "ray_max_retries"): (0, None), ("train", "ray_num_cpus"): (0, None), ("train", "ray_num_gpus"): (0, None),
    ("agents", "lease_s"): (1e-3, None), ("agents", "max_attempts"): (1, None),
    ("agents", "max_crashes"): (1, None), ("agents", "straggler_s"): (0, None),
    ("build", "intra_op_threads"): (0, 1024), ("build", "workspace_mb"): (1, None),
    ("measure", "warmup_s"): (0, None), ("measure", "min_iterations"): (1, None),
    ("measure", "min_duration_s"): (0, None), ("measure", "max_duration_s"): (1e-3, None),
    ("measure", "target_precision"): (0, 1), ("measure", "cv_threshold"): (0, None),
    ("measure", "batch_size"): (1, None), ("measure", "seed"): (0, 2**32 - 1),
    ("measure", "timeout_s"): (1e-3, None), ("measure", "memory_limit_mb"): (1, None),
}


def _check_ranges(cfg: "SearchConfig") -> None:
    sections = {"search": cfg, "train": cfg.train, "agents": cfg.agents, "build": cfg.build, "measure": cfg.measure}
    for (where, key), (low, high) in _RANGES.items():
        obj = sections[where]
        value = getattr(obj, key)
        if not _type_ok(value, typing.get_type_hints(type(obj))[key]):  # a command-line override
            raise ConfigError(f"[{where}].{key} must be a number, got {value!r}")
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            raise ConfigError(f"[{where}].{key} must be {bounds}, got {value!r}")


def check_epoch_range(cfg: SearchConfig) -> SearchConfig:
    """A new run's space must not evolve epochs beyond ``[train].max_epochs`` (those genes would
    have no effect). Not applied to stored runs, which resume as they were started."""
    top = cfg.space_options.get("max_epochs")
    if isinstance(top, int) and top > cfg.train.max_epochs:
        raise ConfigError(f"space_options.max_epochs {top} > [train].max_epochs {cfg.train.max_epochs}: "
                          f"the epoch genes above {cfg.train.max_epochs} would have no effect")
    return cfg


def from_dict(data: dict[str, Any]) -> SearchConfig:
    """Build a config from the parsed TOML structure."""
    data = dict(data)
    unknown = sorted(set(data) - {"search", "train", "agents", "build", "measure", "fidelity", "predictor"})
    if unknown:
        raise ConfigError(f"unknown sections {unknown}")
    for name in ("search", "train", "agents", "build", "measure", "fidelity", "predictor"):
        if not isinstance(data.get(name, {}), dict):
            raise ConfigError(f"[{name}] must be a table")
    s = dict(data.get("search", {}))
    for key in ("dataset", "data_root", "accuracy_table"):
        if isinstance(s.get(key), str):
            s[key] = _expand(s[key])
    for key in ("objectives", "constraints"):
        if key in s:
            if not isinstance(s[key], list):
                raise ConfigError(f"[search].{key} must be a list of strings")
            s[key] = tuple(s[key])
    try:
        cfg = _section(SearchConfig, s, "search")
        agents = dict(data.get("agents", {}))
        if isinstance(agents.get("addresses"), list):
            agents["addresses"] = tuple(agents["addresses"])
        build, measure = dict(data.get("build", {})), dict(data.get("measure", {}))
        check_types(BuildConfig, build, "build")
        check_types(MeasureConfig, measure, "measure")
        cfg = replace(
            cfg,
            train=_section(TrainSettings, data.get("train", {}), "train"),
            agents=_section(AgentsConfig, agents, "agents"),
            fidelity=_fidelity(data.get("fidelity", {})),
            build=BuildConfig.from_dict(build),
            measure=MeasureConfig.from_dict(measure),
            predictor=_section(PredictorConfig, data.get("predictor", {}), "predictor"),
        )
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return check_epoch_range(cfg.validate())


#: the project root (``search/`` lives in it)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Where the shared data lies: ``$HWNAS_SHARED_DATA``, else ``../shared/data`` beside the
    project root (the layout of the development machines)."""
    return Path(os.environ.get("HWNAS_SHARED_DATA") or _PROJECT_ROOT.parent / "shared" / "data")


def _expand(value: str) -> str:
    """``${HWNAS_SHARED_DATA}`` (defaulting to :func:`shared_data_dir`), other ``$VARS`` and ``~``
    in a path setting, so example files name the shared data without a machine's layout."""
    if not value:
        return value
    value = value.replace("${HWNAS_SHARED_DATA}", str(shared_data_dir()))
    return os.path.expanduser(os.path.expandvars(value))


def _fidelity(data: dict[str, Any]) -> FidelitySettings:
    d = dict(data)
    if "rungs" in d:
        if not isinstance(d["rungs"], list) or not all(isinstance(r, int) for r in d["rungs"]):
            raise ConfigError("[fidelity].rungs must be a list of epoch counts, e.g. [1, 3, 9]")
        d["rungs"] = tuple(d["rungs"])
    return _section(FidelitySettings, d, "fidelity")


def load(path: str | Path | None) -> SearchConfig:
    """Read a TOML config (``None``: the embedded default)."""
    if path is None:
        return SearchConfig(space_options=dict(DEMO_SPACE_OPTIONS), train=DEMO_TRAIN, budget=DEMO_BUDGET,
                            population_size=16, measure=DEMO_MEASURE).validate()
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
    fid = dict(d.pop("fidelity", None) or {})  # absent in runs stored before [fidelity]
    fid["rungs"] = tuple(fid.get("rungs", ()))
    predictor = PredictorConfig(**d.pop("predictor", {}))  # absent in runs stored before issue 12
    return SearchConfig(**d, train=TrainSettings(**train), agents=AgentsConfig(**agents),
                        fidelity=FidelitySettings(**fid), predictor=predictor,
                        build=BuildConfig.from_dict(build), measure=MeasureConfig.from_dict(measure))
