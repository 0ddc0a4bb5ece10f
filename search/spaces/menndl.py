"""A free CNN topology space in the spirit of ORNL's MENNDL.

A :class:`MenndlGenome` is a variable-length list of layer genes (:class:`ConvGene`,
:class:`PoolGene`), a classifier head (:class:`HeadGene`) and the training hyperparameters
(:class:`~search.spaces.base.TrainHParams`), all frozen dataclasses, so the genome is hashable.

JSON form (``MenndlSpace.to_json``)::

    {"layers": [{"type": "conv", "filters": 16, "kernel": 3, "stride": 1,
                 "activation": "relu", "batch_norm": true, "dropout": 0.1, "skip_from": null},
                {"type": "pool", "kind": "max", "kernel": 2, "stride": 2}, ...],
     "head": {"hidden": 64, "dropout": 0.2},
     "hparams": {"learning_rate": 0.01, "batch_size": 64, "epochs": 3,
                 "weight_decay": 0.0005, "optimizer": "sgd", "schedule": "onecycle",
                 "warmup_epochs": 0, "label_smoothing": 0.1, "augment": 0.5}}

(a genome stored before ``schedule``, ``warmup_epochs``, ``label_smoothing`` and ``augment``
existed reads with their old behaviour: cosine, none, none, none.)

Rules that keep every genome buildable for every :class:`~search.spaces.base.TaskSpec`:

- Points: point ``k`` is the input of layer ``k`` (point 0 is the network input, point ``n``
  the output of the last layer). The *level* of a point is the number of downsampling genes
  (stride-2 conv or stride-2 pool) before it.
- Skip connections: a conv layer ``i`` may add the tensor at point ``j <= i`` to its
  pre-activation output when point ``j`` has the same level as the layer's output (so no
  downsampling lies between them and the spatial sizes are equal for any input size). When the
  channel counts differ, a 1x1 convolution (no bias) projects the skip; when they match it is an
  identity add. Operators that move, add or remove layers re-index skips and drop those that
  become invalid.
- Resolution: a genome holds at most ``max_downsamples`` downsampling genes. At build time the
  resolution is tracked and a downsampling gene is applied only while the feature map is at least
  2x2; below that a stride-2 conv is built with stride 1 and a pool is left out. So the spatial size
  never collapses below 1 and a genome built for 8x8 digits and for 32x32 images alike.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Union

from search.spaces.base import TRAIN_OPTIMIZERS, SearchSpace, TaskSpec, TrainHParams, register_space

ACTIVATIONS = ("relu", "relu6", "elu", "leaky_relu", "hardswish", "tanh", "sigmoid")
KERNELS = (1, 3, 5, 7)
FILTER_CHOICES = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DROPOUTS = (0.0, 0.1, 0.2, 0.3, 0.5)
HIDDEN_CHOICES = (0, 16, 32, 64, 128, 256)
BATCH_SIZES = (16, 32, 64, 128)
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 5e-4, 1e-3)
OPTIMIZERS = TRAIN_OPTIMIZERS
SCHEDULE_CHOICES = ("cosine", "step", "onecycle")
WARMUP_CHOICES = (0, 1)
LABEL_SMOOTHINGS = (0.0, 0.1)
AUGMENT_CHOICES = (0.0, 0.5, 1.0)
#: the hyperparameter genes (mutation picks one, crossover mixes them per field)
HPARAM_GENES = ("learning_rate", "batch_size", "epochs", "weight_decay", "optimizer", "schedule",
                "warmup_epochs", "label_smoothing", "augment")
POOL_KINDS = ("max", "avg")
HEAD_GRIDS = (1, 2)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"invalid MENNDL gene: {what}")


@dataclass(frozen=True)
class ConvGene:
    """Conv kxk (padding k//2) -> [batch norm] -> [+ skip] -> activation -> [dropout]."""

    filters: int
    kernel: int = 3
    stride: int = 1
    activation: str = "relu"
    batch_norm: bool = True
    dropout: float = 0.0
    skip_from: int | None = None

    def __post_init__(self) -> None:
        _check(_is_int(self.filters) and self.filters >= 1, f"filters={self.filters!r}")
        _check(_is_int(self.kernel) and self.kernel in KERNELS, f"kernel={self.kernel!r} not in {KERNELS}")
        _check(_is_int(self.stride) and self.stride in (1, 2), f"stride={self.stride!r} not in (1, 2)")
        _check(self.activation in ACTIVATIONS, f"activation={self.activation!r} not in {ACTIVATIONS}")
        _check(isinstance(self.batch_norm, bool), f"batch_norm={self.batch_norm!r}")
        _check(isinstance(self.dropout, float) and 0.0 <= self.dropout < 1.0, f"dropout={self.dropout!r}")
        _check(
            self.skip_from is None or (_is_int(self.skip_from) and self.skip_from >= 0),
            f"skip_from={self.skip_from!r}",
        )


@dataclass(frozen=True)
class PoolGene:
    """Max or average pooling; kernel 3 uses padding 1, kernel 2 requires stride 2."""

    kind: str = "max"
    kernel: int = 2
    stride: int = 2

    def __post_init__(self) -> None:
        _check(self.kind in POOL_KINDS, f"pool kind={self.kind!r} not in {POOL_KINDS}")
        _check(_is_int(self.kernel) and self.kernel in (2, 3), f"pool kernel={self.kernel!r} not in (2, 3)")
        _check(_is_int(self.stride) and self.stride in (1, 2), f"pool stride={self.stride!r} not in (1, 2)")
        _check(not (self.kernel == 2 and self.stride == 1), "pool kernel 2 needs stride 2")


@dataclass(frozen=True)
class HeadGene:
    """Average pool to a ``grid`` x ``grid`` map (1 = global) -> flatten -> [dropout ->
    dense(hidden) -> relu] -> dropout -> dense(classes). A 2x2 grid keeps where a feature is,
    which small inputs (8x8 digits) need; the global pool is the cheaper head. The grid applies
    where it divides the final map's side, else the pool is global."""

    hidden: int = 0
    dropout: float = 0.0
    grid: int = 1

    def __post_init__(self) -> None:
        _check(_is_int(self.hidden) and self.hidden >= 0, f"hidden={self.hidden!r}")
        _check(isinstance(self.dropout, float) and 0.0 <= self.dropout < 1.0, f"head dropout={self.dropout!r}")
        _check(_is_int(self.grid) and self.grid in HEAD_GRIDS, f"head grid={self.grid!r} not in {HEAD_GRIDS}")


Layer = Union[ConvGene, PoolGene]


@dataclass(frozen=True)
class MenndlGenome:
    """Layers, head and training hyperparameters of one MENNDL candidate."""

    layers: tuple[Layer, ...]
    head: HeadGene = HeadGene()
    hparams: TrainHParams = TrainHParams()


def _downsamples(layer: Layer) -> bool:
    return layer.stride == 2


def _levels(layers: tuple[Layer, ...] | list[Layer]) -> list[int]:
    """Level of every point 0..n (number of downsampling genes before it)."""
    levels = [0]
    for layer in layers:
        levels.append(levels[-1] + (1 if _downsamples(layer) else 0))
    return levels


def _valid_skip_sources(layers: list[Layer], i: int) -> list[int]:
    levels = _levels(layers)
    return [j for j in range(i + 1) if levels[j] == levels[i + 1]]


def _repair_skips(layers: list[Layer]) -> list[Layer]:
    """Drop skips that point forward or across a downsampling gene."""
    out = list(layers)
    for i, layer in enumerate(out):
        if isinstance(layer, ConvGene) and layer.skip_from is not None:
            if layer.skip_from not in _valid_skip_sources(out, i):
                out[i] = replace(layer, skip_from=None)
    return out


def _shift_skips(layers: list[Layer], start: int, at: int, delta: int) -> list[Layer]:
    """For layers ``start..``: skips to points ``> at`` move by ``delta`` (clamped to ``at``)."""
    out = list(layers)
    for i in range(start, len(out)):
        layer = out[i]
        if isinstance(layer, ConvGene) and layer.skip_from is not None and layer.skip_from > at:
            out[i] = replace(layer, skip_from=max(at, layer.skip_from + delta))
    return out


def _round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


@register_space("menndl")
class MenndlSpace(SearchSpace):
    """Variable-depth CNNs and their training hyperparameters (see the module docstring).

    Keyword arguments bound the space: ``min_layers``/``max_layers`` conv layers,
    ``max_pools`` pooling layers, ``max_downsamples`` stride-2 genes, filters in
    ``min_filters..max_filters``, head width up to ``max_hidden``, epochs in
    ``min_epochs..max_epochs``, learning rate log-uniform in ``lr_range``.
    """

    def __init__(
        self,
        *,
        min_layers: int = 1,
        max_layers: int = 8,
        min_filters: int = 4,
        max_filters: int = 64,
        max_pools: int = 2,
        max_downsamples: int = 3,
        max_hidden: int = 128,
        min_epochs: int = 1,
        max_epochs: int = 8,
        lr_range: tuple[float, float] = (1e-4, 0.1),
        skip_probability: float = 0.3,
    ) -> None:
        if not 1 <= min_layers <= max_layers:
            raise ValueError("need 1 <= min_layers <= max_layers")
        self.filters = tuple(f for f in FILTER_CHOICES if min_filters <= f <= max_filters)
        if not self.filters:
            raise ValueError(f"no filter count in {FILTER_CHOICES} lies in [{min_filters}, {max_filters}]")
        if not 1 <= min_epochs <= max_epochs:
            raise ValueError("need 1 <= min_epochs <= max_epochs")
        if not 0 < lr_range[0] <= lr_range[1]:
            raise ValueError("need 0 < lr_range[0] <= lr_range[1]")
        if max_pools < 0 or max_downsamples < 0 or max_hidden < 0:
            raise ValueError("max_pools, max_downsamples and max_hidden must be >= 0")
        self.min_layers, self.max_layers = min_layers, max_layers
        self.min_filters, self.max_filters = min_filters, max_filters
        self.max_pools, self.max_downsamples = max_pools, max_downsamples
        self.hidden = tuple(h for h in HIDDEN_CHOICES if h <= max_hidden)
        self.min_epochs, self.max_epochs = min_epochs, max_epochs
        self.lr_range = (float(lr_range[0]), float(lr_range[1]))
        self.skip_probability = skip_probability

    # -- validity ---------------------------------------------------------------------------
    def validate(self, genome: MenndlGenome) -> MenndlGenome:
        """Raise ``ValueError`` unless ``genome`` lies in this space; return it."""
        if not isinstance(genome, MenndlGenome):
            raise ValueError(f"not a MenndlGenome: {type(genome).__name__}")
        layers = genome.layers
        convs = [layer for layer in layers if isinstance(layer, ConvGene)]
        pools = [layer for layer in layers if isinstance(layer, PoolGene)]
        if not self.min_layers <= len(convs) <= self.max_layers:
            raise ValueError(f"{len(convs)} conv layers, need {self.min_layers}..{self.max_layers}")
        if len(pools) > self.max_pools:
            raise ValueError(f"{len(pools)} pooling layers, at most {self.max_pools}")
        if sum(_downsamples(layer) for layer in layers) > self.max_downsamples:
            raise ValueError(f"more than {self.max_downsamples} downsampling layers")
        for i, layer in enumerate(layers):
            if isinstance(layer, ConvGene):
                if not self.min_filters <= layer.filters <= self.max_filters:
                    raise ValueError(
                        f"layer {i}: filters {layer.filters} outside [{self.min_filters}, {self.max_filters}]"
                    )
                if layer.skip_from is not None and layer.skip_from not in _valid_skip_sources(list(layers), i):
                    raise ValueError(
                        f"layer {i}: skip from point {layer.skip_from} crosses a downsampling layer or points forward"
                    )
            elif not isinstance(layer, PoolGene):
                raise ValueError(f"layer {i}: unknown gene {type(layer).__name__}")
        if genome.head.hidden > max(self.hidden):
            raise ValueError(f"head hidden {genome.head.hidden} > {max(self.hidden)}")
        hp = genome.hparams
        if not self.min_epochs <= hp.epochs <= self.max_epochs:
            raise ValueError(f"epochs {hp.epochs} outside [{self.min_epochs}, {self.max_epochs}]")
        if not self.lr_range[0] <= hp.learning_rate <= self.lr_range[1]:
            raise ValueError(f"learning rate {hp.learning_rate} outside {self.lr_range}")
        if hp.batch_size < 1 or hp.weight_decay < 0 or hp.optimizer not in OPTIMIZERS:
            raise ValueError(f"invalid training hyperparameters {hp}")
        return genome

    # -- sampling -----------------------------------------------------------------------------
    def _conv(self, rng: random.Random, stride: int = 1) -> ConvGene:
        return ConvGene(
            filters=rng.choice(self.filters),
            kernel=rng.choice(KERNELS),
            stride=stride,
            activation=rng.choice(ACTIVATIONS),
            batch_norm=rng.random() < 0.7,
            dropout=rng.choice(DROPOUTS),
        )

    def _pool(self, rng: random.Random) -> PoolGene:
        kernel = rng.choice((2, 3))
        return PoolGene(kind=rng.choice(POOL_KINDS), kernel=kernel, stride=2 if kernel == 2 else rng.choice((1, 2)))

    def _lr(self, rng: random.Random) -> float:
        lo, hi = (math.log(v) for v in self.lr_range)
        return min(max(_round_sig(math.exp(rng.uniform(lo, hi))), self.lr_range[0]), self.lr_range[1])

    def _hparams(self, rng: random.Random) -> TrainHParams:
        return TrainHParams(
            learning_rate=self._lr(rng),
            batch_size=rng.choice(BATCH_SIZES),
            epochs=rng.randint(self.min_epochs, self.max_epochs),
            weight_decay=rng.choice(WEIGHT_DECAYS),
            optimizer=rng.choice(OPTIMIZERS),
            schedule=rng.choice(SCHEDULE_CHOICES),
            warmup_epochs=rng.choice(WARMUP_CHOICES),
            label_smoothing=rng.choice(LABEL_SMOOTHINGS),
            augment=rng.choice(AUGMENT_CHOICES),
        )

    def _head(self, rng: random.Random) -> HeadGene:
        return HeadGene(hidden=rng.choice(self.hidden), dropout=rng.choice(DROPOUTS), grid=rng.choice(HEAD_GRIDS))

    def _add_skips(self, layers: list[Layer], rng: random.Random) -> list[Layer]:
        for i, layer in enumerate(layers):
            if isinstance(layer, ConvGene) and rng.random() < self.skip_probability:
                sources = _valid_skip_sources(layers, i)
                if sources:
                    layers[i] = replace(layer, skip_from=rng.choice(sources))
        return layers

    def sample(self, rng: random.Random) -> MenndlGenome:
        """Random depth, widths, kernels, strides, pools, skips, head and hyperparameters."""
        layers: list[Layer] = [self._conv(rng) for _ in range(rng.randint(self.min_layers, self.max_layers))]
        for _ in range(rng.randint(0, self.max_pools)):
            layers.insert(rng.randint(1, len(layers)), self._pool(rng))
        downs = sum(_downsamples(layer) for layer in layers)
        for i, layer in enumerate(layers):
            if downs > self.max_downsamples and _downsamples(layer):
                layers[i] = replace(layer, stride=1) if isinstance(layer, ConvGene) else PoolGene(layer.kind, 3, 1)
                downs -= 1
            elif isinstance(layer, ConvGene) and downs < self.max_downsamples and rng.random() < 0.25:
                layers[i] = replace(layer, stride=2)
                downs += 1
        layers = self._add_skips(layers, rng)
        return self.validate(MenndlGenome(tuple(layers), self._head(rng), self._hparams(rng)))

    # -- mutation -----------------------------------------------------------------------------
    def _normalise(self, layers: list[Layer]) -> list[Layer]:
        """Enforce the pool/downsample/conv-count limits and repair skips."""
        downs = 0
        pools = 0
        out: list[Layer] = []
        for layer in layers:
            if isinstance(layer, PoolGene):
                if pools >= self.max_pools:
                    continue
                pools += 1
                if layer.stride == 2 and downs >= self.max_downsamples:
                    layer = PoolGene(layer.kind, 3, 1)
            elif layer.stride == 2 and downs >= self.max_downsamples:
                layer = replace(layer, stride=1)
            downs += _downsamples(layer)
            out.append(layer)
        convs = [i for i, layer in enumerate(out) if isinstance(layer, ConvGene)]
        for i in reversed(convs[self.max_layers:]):
            out = _shift_skips(out[:i] + out[i + 1 :], i, i, -1)
        return _repair_skips(out)

    def _mutate_layer(self, layer: Layer, rng: random.Random) -> Layer:
        if isinstance(layer, PoolGene):
            choice = rng.choice(("kind", "shape"))
            if choice == "kind":
                return replace(layer, kind="avg" if layer.kind == "max" else "max")
            shapes = (PoolGene(layer.kind, 2, 2), PoolGene(layer.kind, 3, 2), PoolGene(layer.kind, 3, 1))
            return rng.choice([p for p in shapes if p != layer])
        field = rng.choice(("filters", "kernel", "stride", "activation", "batch_norm", "dropout"))
        if field == "filters":
            idx = self.filters.index(layer.filters) if layer.filters in self.filters else 0
            idx = min(max(idx + rng.choice((-2, -1, 1, 2)), 0), len(self.filters) - 1)
            return replace(layer, filters=self.filters[idx])
        if field == "kernel":
            return replace(layer, kernel=rng.choice([k for k in KERNELS if k != layer.kernel]))
        if field == "stride":
            return replace(layer, stride=3 - layer.stride)
        if field == "activation":
            return replace(layer, activation=rng.choice([a for a in ACTIVATIONS if a != layer.activation]))
        if field == "batch_norm":
            return replace(layer, batch_norm=not layer.batch_norm)
        return replace(layer, dropout=rng.choice([d for d in DROPOUTS if d != layer.dropout]))

    def _mutate_hparams(self, hp: TrainHParams, rng: random.Random) -> TrainHParams:
        field = rng.choice(HPARAM_GENES)
        if field == "learning_rate":
            lr = _round_sig(hp.learning_rate * math.exp(rng.gauss(0.0, 0.7)))
            return replace(hp, learning_rate=min(max(lr, self.lr_range[0]), self.lr_range[1]))
        if field == "batch_size":
            return replace(hp, batch_size=rng.choice([b for b in BATCH_SIZES if b != hp.batch_size]))
        if field == "epochs":
            e = min(max(hp.epochs + rng.choice((-2, -1, 1, 2)), self.min_epochs), self.max_epochs)
            return replace(hp, epochs=e)
        if field == "weight_decay":
            return replace(hp, weight_decay=rng.choice([w for w in WEIGHT_DECAYS if w != hp.weight_decay]))
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULE_CHOICES, "warmup_epochs": WARMUP_CHOICES,
                   "label_smoothing": LABEL_SMOOTHINGS, "augment": AUGMENT_CHOICES}[field]
        return replace(hp, **{field: rng.choice([v for v in choices if v != getattr(hp, field)])})

    def _mutate_once(self, g: MenndlGenome, rng: random.Random) -> MenndlGenome:
        layers = list(g.layers)
        n_conv = sum(isinstance(layer, ConvGene) for layer in layers)
        n_pool = len(layers) - n_conv
        ops = ["modify", "modify", "skip", "hparam", "head"]
        if n_conv < self.max_layers or n_pool < self.max_pools:
            ops.append("add")
        if n_conv > self.min_layers or n_pool > 0:
            ops.append("remove")
        op = rng.choice(ops)
        if op == "add":
            pos = rng.randint(0, len(layers))
            use_pool = n_pool < self.max_pools and (n_conv >= self.max_layers or rng.random() < 0.3) and pos > 0
            new: Layer = self._pool(rng) if use_pool else self._conv(rng, stride=1)
            if not use_pool and n_conv >= self.max_layers:
                return g
            layers = _shift_skips(layers[:pos] + [new] + layers[pos:], pos + 1, pos, +1)
        elif op == "remove":
            removable = [i for i, layer in enumerate(layers)
                         if isinstance(layer, PoolGene) or n_conv > self.min_layers]
            pos = rng.choice(removable)
            layers = _shift_skips(layers[:pos] + layers[pos + 1 :], pos, pos, -1)
        elif op == "modify":
            pos = rng.randrange(len(layers))
            layers[pos] = self._mutate_layer(layers[pos], rng)
        elif op == "skip":
            convs = [i for i, layer in enumerate(layers) if isinstance(layer, ConvGene)]
            pos = rng.choice(convs)
            layer = layers[pos]
            sources = [s for s in _valid_skip_sources(layers, pos) if s != layer.skip_from]
            if layer.skip_from is not None and (not sources or rng.random() < 0.5):
                layers[pos] = replace(layer, skip_from=None)
            elif sources:
                layers[pos] = replace(layer, skip_from=rng.choice(sources))
        elif op == "hparam":
            return replace(g, hparams=self._mutate_hparams(g.hparams, rng))
        else:
            head = g.head
            r = rng.random()
            if r < 0.4:
                head = replace(head, hidden=rng.choice([h for h in self.hidden if h != head.hidden] or [head.hidden]))
            elif r < 0.7:
                head = replace(head, grid=next(g for g in HEAD_GRIDS if g != head.grid))
            else:
                head = replace(head, dropout=rng.choice([d for d in DROPOUTS if d != head.dropout]))
            return replace(g, head=head)
        return replace(g, layers=tuple(self._normalise(layers)))

    def mutate(self, genome: MenndlGenome, rng: random.Random) -> MenndlGenome:
        """One random edit: add/remove/modify a layer, toggle a skip, change the head or a hyperparameter."""
        return self._mutate_until_changed(genome, self._mutate_once, rng)

    def crossover(self, a: MenndlGenome, b: MenndlGenome, rng: random.Random) -> MenndlGenome:
        """One-point crossover of the layer lists; head from either parent; hyperparameters mixed per field."""
        self.validate(a)
        self.validate(b)
        i = rng.randint(0, len(a.layers))
        j = rng.randint(0, len(b.layers))
        tail: list[Layer] = []
        for layer in b.layers[j:]:
            if isinstance(layer, ConvGene) and layer.skip_from is not None:
                # b's point p >= j becomes the child's point p - j + i; earlier points are gone.
                layer = replace(layer, skip_from=layer.skip_from - j + i if layer.skip_from >= j else None)
            tail.append(layer)
        layers = self._normalise(list(a.layers[:i]) + tail)
        if not any(isinstance(layer, ConvGene) for layer in layers):
            layers = self._normalise(list(a.layers))
        while sum(isinstance(layer, ConvGene) for layer in layers) < self.min_layers:
            layers.append(self._conv(rng))
        pick = {f: rng.random() < 0.5 for f in HPARAM_GENES}
        hp = TrainHParams(**{f: getattr(a.hparams if use_a else b.hparams, f) for f, use_a in pick.items()})
        head = a.head if rng.random() < 0.5 else b.head
        return self.validate(MenndlGenome(tuple(layers), head, hp))

    # -- serialisation ------------------------------------------------------------------------
    def to_json(self, genome: MenndlGenome) -> dict[str, Any]:
        layers = []
        for layer in genome.layers:
            if isinstance(layer, ConvGene):
                layers.append({"type": "conv", "filters": layer.filters, "kernel": layer.kernel,
                               "stride": layer.stride, "activation": layer.activation,
                               "batch_norm": layer.batch_norm, "dropout": layer.dropout,
                               "skip_from": layer.skip_from})
            else:
                layers.append({"type": "pool", "kind": layer.kind, "kernel": layer.kernel, "stride": layer.stride})
        hp = genome.hparams
        return {
            "layers": layers,
            "head": {"hidden": genome.head.hidden, "dropout": genome.head.dropout, "grid": genome.head.grid},
            "hparams": hp.to_json(),
        }

    def from_json(self, data: dict[str, Any]) -> MenndlGenome:
        try:
            layers: list[Layer] = []
            for d in data["layers"]:
                d = dict(d)
                kind = d.pop("type")
                if kind == "conv":
                    d["dropout"] = _as_float(d.get("dropout", 0.0))
                    layers.append(ConvGene(**d))
                elif kind == "pool":
                    layers.append(PoolGene(**d))
                else:
                    raise ValueError(f"unknown layer type {kind!r}")
            head = HeadGene(hidden=data["head"]["hidden"], dropout=_as_float(data["head"]["dropout"]),
                            grid=data["head"].get("grid", 1))
            h = data["hparams"]
            hp = TrainHParams.from_json(h)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed MENNDL genome JSON: {type(exc).__name__}: {exc}") from None
        return self.validate(MenndlGenome(tuple(layers), head, hp))

    def _architecture(self, genome: MenndlGenome) -> str:
        """Readable string of the architecture only (genomes that differ only in training
        hyperparameters build the same network and share it)."""
        parts = []
        for layer in genome.layers:
            if isinstance(layer, ConvGene):
                s = f"c{layer.filters}k{layer.kernel}s{layer.stride}{layer.activation}"
                s += ".bn" if layer.batch_norm else ""
                s += f".d{layer.dropout:g}" if layer.dropout else ""
                s += f".skip{layer.skip_from}" if layer.skip_from is not None else ""
            else:
                s = f"{layer.kind}pool{layer.kernel}s{layer.stride}"
            parts.append(s)
        parts.append(f"head{genome.head.hidden}.d{genome.head.dropout:g}" + (f".g{genome.head.grid}" if genome.head.grid != 1 else ""))
        return "|".join(parts)

    def key(self, genome: MenndlGenome) -> str:
        """The architecture's readable string, ``#``, the training hyperparameters: unique per
        genome; genomes that differ only in hyperparameters share the part before ``#``."""
        hp = genome.hparams
        return (f"{self._architecture(genome)}#{hp.optimizer},lr={hp.learning_rate!r},bs={hp.batch_size},"
                f"ep={hp.epochs},wd={hp.weight_decay!r}{hp.key_suffix()}")

    def hparams(self, genome: MenndlGenome) -> TrainHParams:
        return genome.hparams

    # -- building -----------------------------------------------------------------------------
    def build(self, genome: MenndlGenome, task: TaskSpec) -> Any:
        """A ``torch.nn.Module`` mapping ``(B, C, H, W)`` to ``(B, num_classes)`` logits."""
        self.validate(genome)
        return _net_class()(genome, task)


@functools.cache
def _net_class() -> type:
    import torch
    from torch import nn

    def activation(name: str) -> nn.Module:
        if name == "leaky_relu":
            return nn.LeakyReLU(0.1)
        return {"relu": nn.ReLU, "relu6": nn.ReLU6, "elu": nn.ELU, "hardswish": nn.Hardswish,
                "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[name]()

    class MenndlNet(nn.Module):
        """The network of one :class:`MenndlGenome` (resolution tracked, see module docstring)."""

        def __init__(self, genome: MenndlGenome, task: TaskSpec) -> None:
            super().__init__()
            channels = [task.in_channels]  # channels at every point
            size = task.image_size
            self.blocks = nn.ModuleList()
            self.projections = nn.ModuleList()
            self.skip_from: list[int] = []  # -1: no skip
            for layer in genome.layers:
                c_in = channels[-1]
                if isinstance(layer, ConvGene):
                    stride = layer.stride if size >= 2 else 1
                    size = (size - 1) // stride + 1
                    main = [nn.Conv2d(c_in, layer.filters, layer.kernel, stride, layer.kernel // 2,
                                      bias=not layer.batch_norm)]
                    if layer.batch_norm:
                        main.append(nn.BatchNorm2d(layer.filters))
                    post = [activation(layer.activation)]
                    if layer.dropout > 0:
                        post.append(nn.Dropout(layer.dropout))
                    self.blocks.append(nn.ModuleDict({"main": nn.Sequential(*main), "post": nn.Sequential(*post)}))
                    src = -1 if layer.skip_from is None else layer.skip_from
                    self.skip_from.append(src)
                    needs_proj = src >= 0 and channels[src] != layer.filters
                    self.projections.append(
                        nn.Conv2d(channels[src], layer.filters, 1, bias=False) if needs_proj else nn.Identity()
                    )
                    channels.append(layer.filters)
                else:
                    if layer.stride == 2 and size < 2:
                        pool: nn.Module = nn.Identity()  # the map is already 1x1
                    elif layer.kind == "max":
                        pool = nn.MaxPool2d(layer.kernel, layer.stride, layer.kernel // 2 if layer.kernel == 3 else 0)
                    else:
                        pool = nn.AvgPool2d(layer.kernel, layer.stride, layer.kernel // 2 if layer.kernel == 3 else 0,
                                            count_include_pad=False)
                    if not isinstance(pool, nn.Identity):
                        pad = 1 if layer.kernel == 3 else 0
                        size = (size + 2 * pad - layer.kernel) // layer.stride + 1
                    self.blocks.append(pool)
                    self.skip_from.append(-1)
                    self.projections.append(nn.Identity())
                    channels.append(c_in)
            self.final_size = size
            # ONNX AveragePool needs the grid to divide the map (the exporter refuses otherwise)
            grid = genome.head.grid if size >= genome.head.grid and size % genome.head.grid == 0 else 1
            head: list[nn.Module] = [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
            width = channels[-1] * grid * grid
            if genome.head.hidden:
                if genome.head.dropout > 0:
                    head.append(nn.Dropout(genome.head.dropout))
                head += [nn.Linear(width, genome.head.hidden), nn.ReLU()]
                width = genome.head.hidden
            if genome.head.dropout > 0:
                head.append(nn.Dropout(genome.head.dropout))
            head.append(nn.Linear(width, task.num_classes))
            self.head = nn.Sequential(*head)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            points = [x]
            for block, proj, src in zip(self.blocks, self.projections, self.skip_from):
                if isinstance(block, nn.ModuleDict):
                    y = block["main"](points[-1])
                    if src >= 0:
                        y = y + proj(points[src])
                    y = block["post"](y)
                else:
                    y = block(points[-1])
                points.append(y)
            return self.head(points[-1])

    return MenndlNet


def _as_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)
