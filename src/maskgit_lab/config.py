"""Experiment configuration: dataclasses are the single source of defaults.

A YAML file under ``experiments/`` overrides some fields; ``key.sub=value`` strings on
the command line override further. Unknown keys, wrong types and unknown names are
ConfigErrors that list the valid choices. The resolved config is stored inside every
checkpoint and logged with every run.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskgit_lab.bounds import float_problem, int_problem
from maskgit_lab.decoding.ar_sampler import ARDecodeConfig
from maskgit_lab.decoding.orders import ORDERS
from maskgit_lab.decoding.sampler import DecodeConfig
from maskgit_lab.decoding.schedules import canonical_name
from maskgit_lab.errors import ConfigError
from maskgit_lab.hardware import INFERENCE_PRECISIONS, PRECISIONS
from maskgit_lab.models.transformer import TransformerConfig
from maskgit_lab.models.vqgan import TokenizerConfig
from maskgit_lab.redact import register


class YamlLoader(yaml.SafeLoader):
    """YAML as people write configs: ``1e-3``, ``1E-4``, ``.5`` and ``5.`` are numbers (YAML 1.1
    reads the first two as strings); a key given twice in one mapping is an error, not a
    silent overwrite."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"key {key!r} is given twice (lines {seen[key]} and {line})")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def read_yaml(text: str):
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader with one more number form


MAX_TRAININGS = 1000
# An experiment's name is a folder under runs_dir and an MLflow experiment: a name, never a path.
NAME = re.compile(r"[A-Za-z0-9._-]+")
# Tokenizer layouts (models.registry builds each one); "vqgan" is the one the suite trains.
TOKENIZER_LAYOUTS = ("vqgan", "llamagen")
# Feature extractors for the metrics, by name (eval.metrics.EXTRACTORS builds each one).
EXTRACTOR_NAMES = ("fmnist-evaluator", "inception-v3-compat")


@dataclass
class DataConfig:
    """Dataset selection. ``name``: fmnist or imagefolder."""

    name: str = "fmnist"
    root: str = ""  # empty: $MASKGIT_FMNIST_DIR, then the Debian package's folder
    download: bool = False  # allow torchvision's downloader (needs internet)
    image_size: int = 32
    val_size: int = 5000
    split_seed: int = 0
    num_workers: int = 0
    hflip: bool = False
    # Use only the first n images of each split (0 = all); for smoke runs and tests.
    limit_train: int = 0
    limit_val: int = 0
    limit_test: int = 0
    # A folder of pre-tokenized shards (python -m maskgit_lab.data.shards): stage 2 trains
    # from them without touching images.
    token_shards: str = ""


@dataclass
class PerceptualConfig:
    network: str = "none"  # none | vgg16
    weights: str = ""
    weight: float = 1.0


@dataclass
class TokenizerTrainConfig:
    batch_size: int = 64
    max_steps: int = 600
    lr: float = 2e-4
    # warm-up, then a half cosine from lr to lr * min_lr_ratio at max_steps (1.0: constant)
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    betas: tuple[float, float] = (0.5, 0.9)
    rec_loss: str = "l1"  # l1 | l2
    disc_weight: float = 0.0  # 0 disables the discriminator
    disc_start: int = 0  # step at which the GAN loss switches on
    disc_ch: int = 32
    disc_layers: int = 2
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    revive_every: int = 50  # steps between dead-code revivals (0 disables)
    val_every: int = 200
    seed: int = 0
    precision: str = ""  # Lightning precision for this stage; empty: the experiment's
    compile: bool = False  # torch.compile the tokenizer for training


@dataclass
class TransformerTrainConfig:
    batch_size: int = 128
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = 0.045
    label_smoothing: float = 0.1
    class_dropout: float = 0.1
    grad_clip: float = 1.0
    ema: float = 0.0  # 0 disables EMA weights, else the decay (e.g. 0.999)
    compile: bool = False  # torch.compile the transformer for training
    schedule: str = "cosine"  # training mask schedule gamma
    loss_on: str = "masked"  # masked | all
    val_every: int = 250
    seed: int = 0
    precision: str = ""  # Lightning precision for this stage; empty: the experiment's


@dataclass
class EvaluatorConfig:
    """The Fashion-MNIST evaluator classifier (feature extractor for the fast metrics)."""

    max_steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    feature_dim: int = 128
    # Feature extractor for the metrics: "fmnist-evaluator" (fast, the sweeps' default)
    # or "inception-v3-compat" (the standard FID Inception; weights from inception_weights,
    # else $MASKGIT_INCEPTION_WEIGHTS, else the cache that `make inception` fills).
    extractor: str = "fmnist-evaluator"
    cas_steps: int = 1000  # classifier steps for the classification accuracy score (CAS)
    nll_draws: int = 1  # Monte-Carlo draws of (r, mask) per held-out sequence for the NLL
    inception_weights: str = ""
    # FID reference statistics (.npz with mu, sigma; e.g. ImageNet val's) instead of the
    # reference images' features: FID only, KID and precision/recall are then unavailable.
    reference_stats: str = ""


@dataclass
class SweepConfig:
    """The sweeps: the schedule ablation's grid (Table 3) and the sampler tuner's search."""

    schedules: tuple[str, ...] = (
        "exponential", "cubic", "square", "cosine", "linear", "square_root", "logarithmic", "arccos")
    steps: tuple[int, ...] = (4, 8, 16)
    n: int = 1000  # class-balanced samples per cell, scored against the first n test images
    # Every cell is measured on one independent sample set per seed; tables report the mean
    # and a 95% t interval over them. sweep.seed seeds the rest (NLL draws, TPE, CAS).
    seeds: tuple[int, ...] = (0, 1, 2)
    # The seeds of the ablation's --mode decode (a cheaper, different question), where set;
    # sweep.seeds given as an override still wins. None: sweep.seeds.
    decode_seeds: tuple[int, ...] | None = None
    seed: int = 0
    report_steps: int = 8  # T of the ablation's IS / precision / recall columns (the nearest T of the grid)
    # train: one transformer trained per schedule (the paper's design); decode: one model,
    # the schedule varies at sampling only
    mode: str = "train"
    # Table 3 over this many trainings of every schedule's transformer (training seeds 0..K-1);
    # 0: one training, the config's transformer_train.seed
    trainings: int = 0
    # The orders of the order ablation (sweeps/order_ablation.py): which positions are revealed
    orders: tuple[str, ...] = ("confidence", "random", "halton")
    batch_size: int = 250  # sampling batch
    nll_sequences: int = 2000  # held-out test token grids for the NLL column
    grid_per_class: int = 4  # images per class in each cell's sample-grid artifact
    tune_trials: int = 24
    tune_schedule: str = "cosine"
    tune_n_small: int = 250  # pruning: every trial is scored at this N first
    tune_max_steps: int = 16
    # The autoregressive baseline's sampling in the comparison (Table 1).
    ar_temperature: float = 1.0
    # When given, the AR baseline's temperature is chosen from these by FID on a seed never
    # reported (the same tuning budget as MaskGIT's choice temperature).
    ar_temperature_scan: tuple[float, ...] = ()
    ar_top_k: int = 0  # 0: every code
    ar_top_p: float = 1.0


@dataclass
class ExperimentConfig:
    name: str = "fmnist"
    runs_dir: str = "runs"
    mlflow_uri: str = ""  # empty: sqlite:///<runs_dir>/mlflow.db
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...
    # Lightning precision of the training stages. auto: bf16-mixed where the hardware runs bf16
    # natively (CPU flags amx_bf16 / avx512_bf16, or a CUDA device with bf16), else 32-true.
    precision: str = "auto"
    # Sampling (transformer and tokenizer decoder): auto | fp32 | bf16 (auto as above).
    inference_precision: str = "auto"
    # Transformers trained at once when several are missing: auto = one process per core on a
    # CPU, one on a GPU; or a number (1: one after the other). maskgit_lab.lit.pool.
    train_workers: Any = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    transformer_train: TransformerTrainConfig = field(default_factory=TransformerTrainConfig)
    sampling: DecodeConfig = field(default_factory=DecodeConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_uri:
            return self.mlflow_uri
        return f"sqlite:///{Path(self.runs_dir).resolve() / 'mlflow.db'}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        return _coerce(value, options[0], where) if len(options) == 1 else value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        problem = int_problem(value, where)
        if problem:
            raise ConfigError(problem)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        problem = float_problem(float(value), where)
        if problem:
            raise ConfigError(problem)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {where + '.' if where else ''}{unknown[0]}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in values.items()}
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> nested dict; values parsed as YAML scalars/lists, except a URL
    (a value holding ``://``), which is taken as written and its password registered."""
    tree: dict = {}
    for item in overrides:
        register(item.partition("=")[2] or item)
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = raw if "://" in raw or raw == "" else read_yaml(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise ConfigError(f"override {item!r}: value is not valid YAML ({problem})") from None
        _set_path(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment config from YAML (optional) plus ``key=value`` overrides."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            found = sorted(str(x) for x in Path("experiments").glob("*.yaml"))
            hint = f"; available: {', '.join(found)}" if found else ""
            raise ConfigError(f"config file {str(p)!r} not found{hint}")
        try:
            loaded = read_yaml(p.read_text()) or {}
        except ConfigError as exc:
            raise ConfigError(f"config file {str(p)!r}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "parse error"
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {problem}{where}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
        tree = loaded
    given = parse_overrides(overrides or [])
    tree = _merge(tree, given)
    cfg = _build(ExperimentConfig, tree, "")
    sw = cfg.sweep
    if sw.mode == "decode" and sw.decode_seeds is not None and "seeds" not in (given.get("sweep") or {}):
        sw.seeds = sw.decode_seeds
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that a single field's type cannot express."""
    register(cfg.mlflow_uri)
    if not NAME.fullmatch(cfg.name) or set(cfg.name) == {"."}:
        raise ConfigError(f"name={cfg.name!r} is not a name: use letters, digits, '.', '_' and '-' "
                          "(no path separators, not '.' or '..')")
    positive = {
        "tokenizer_train.batch_size": cfg.tokenizer_train.batch_size, "tokenizer_train.max_steps": cfg.tokenizer_train.max_steps,
        "tokenizer_train.val_every": cfg.tokenizer_train.val_every,
        "transformer_train.batch_size": cfg.transformer_train.batch_size,
        "transformer_train.max_steps": cfg.transformer_train.max_steps,
        "transformer_train.val_every": cfg.transformer_train.val_every, "evaluator.max_steps": cfg.evaluator.max_steps,
        "evaluator.batch_size": cfg.evaluator.batch_size, "evaluator.cas_steps": cfg.evaluator.cas_steps,
        "evaluator.nll_draws": cfg.evaluator.nll_draws, "sweep.batch_size": cfg.sweep.batch_size,
        "sweep.nll_sequences": cfg.sweep.nll_sequences, "sweep.tune_trials": cfg.sweep.tune_trials,
        "data.image_size": cfg.data.image_size, "data.val_size": cfg.data.val_size,
    }
    for where, value in positive.items():
        if value < 1:
            raise ConfigError(f"{where} must be at least 1, got {value}")
    for where, value in (("tokenizer_train.lr", cfg.tokenizer_train.lr), ("transformer_train.lr", cfg.transformer_train.lr),
                         ("evaluator.lr", cfg.evaluator.lr)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{where} must be a finite number > 0, got {value}")
    for where, value in (("data.limit_train", cfg.data.limit_train), ("data.limit_val", cfg.data.limit_val),
                         ("data.limit_test", cfg.data.limit_test), ("data.num_workers", cfg.data.num_workers),
                         ("transformer_train.warmup_steps", cfg.transformer_train.warmup_steps),
                         ("tokenizer_train.warmup_steps", cfg.tokenizer_train.warmup_steps)):
        if value < 0:
            raise ConfigError(f"{where} must be >= 0, got {value}")
    for where, value in (("transformer_train.weight_decay", cfg.transformer_train.weight_decay),
                         ("transformer_train.label_smoothing", cfg.transformer_train.label_smoothing),
                         ("transformer_train.grad_clip", cfg.transformer_train.grad_clip),
                         ("transformer_train.ema", cfg.transformer_train.ema),
                         ("tokenizer_train.disc_weight", cfg.tokenizer_train.disc_weight)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{where} must be a finite number >= 0, got {value}")
    for where, value in (("tokenizer_train.min_lr_ratio", cfg.tokenizer_train.min_lr_ratio),
                         ("transformer_train.min_lr_ratio", cfg.transformer_train.min_lr_ratio)):
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ConfigError(f"{where} must be a number between 0 and 1, got {value}")
    tok = cfg.tokenizer
    if tok.layout not in TOKENIZER_LAYOUTS:
        raise ConfigError(f"unknown tokenizer.layout {tok.layout!r}; valid: {', '.join(TOKENIZER_LAYOUTS)}")
    if cfg.transformer.registers < 0:
        raise ConfigError(f"transformer.registers must be >= 0, got {cfg.transformer.registers}")
    if tok.resolution % 2 ** (len(tok.ch_mult) - 1):
        raise ConfigError(
            f"tokenizer.resolution={tok.resolution} is not divisible by the downsampling "
            f"factor {2 ** (len(tok.ch_mult) - 1)} of ch_mult={list(tok.ch_mult)}"
        )
    if cfg.data.image_size != (tok.input_size or tok.resolution):
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} must equal tokenizer.input_size (or, when 0, "
            f"tokenizer.resolution={tok.resolution})"
        )
    for where, value in (("precision", cfg.precision), ("tokenizer_train.precision", cfg.tokenizer_train.precision),
                         ("transformer_train.precision", cfg.transformer_train.precision)):
        if value and value not in PRECISIONS:
            raise ConfigError(f"unknown {where} {value!r}; valid: {', '.join(PRECISIONS)}")
    w = cfg.train_workers
    if w != "auto" and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
        raise ConfigError(f"train_workers must be 'auto' or a whole number of at least 1, got {w!r}")
    if cfg.inference_precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"unknown inference_precision {cfg.inference_precision!r}; "
                          f"valid: {', '.join(INFERENCE_PRECISIONS)}")
    if cfg.data.name not in ("fmnist", "imagefolder"):
        raise ConfigError(f"unknown data.name {cfg.data.name!r}; valid: fmnist, imagefolder")
    if cfg.tokenizer_train.rec_loss not in ("l1", "l2"):
        raise ConfigError(f"unknown tokenizer_train.rec_loss {cfg.tokenizer_train.rec_loss!r}; valid: l1, l2")
    if cfg.transformer_train.loss_on not in ("masked", "all"):
        raise ConfigError(f"unknown transformer_train.loss_on {cfg.transformer_train.loss_on!r}; valid: masked, all")
    if not 0 <= cfg.transformer_train.class_dropout < 1:
        raise ConfigError("transformer_train.class_dropout must lie in [0, 1)")
    cfg.transformer_train.schedule = canonical_name(cfg.transformer_train.schedule)
    cfg.transformer.resolved()
    check_extractor(cfg.evaluator.extractor)
    sw = cfg.sweep
    sw.schedules = tuple(canonical_name(x) for x in sw.schedules)
    sw.tune_schedule = canonical_name(sw.tune_schedule)
    if sw.mode not in ("decode", "train"):
        raise ConfigError(f"unknown sweep.mode {sw.mode!r}; valid: decode, train")
    if not sw.orders or len(set(sw.orders)) != len(sw.orders) or set(sw.orders) - set(ORDERS):
        raise ConfigError(f"sweep.orders={list(sw.orders)} must be distinct values of: {', '.join(ORDERS)}")
    if sw.trainings and not 2 <= sw.trainings <= MAX_TRAININGS:
        raise ConfigError(f"sweep.trainings={sw.trainings}: a table over trainings needs 2 to {MAX_TRAININGS} of "
                          "them (0: one training)")
    if not sw.schedules or not sw.steps:
        raise ConfigError("sweep.schedules and sweep.steps must not be empty")
    if len(set(sw.schedules)) != len(sw.schedules) or len(set(sw.steps)) != len(sw.steps):
        raise ConfigError("sweep.schedules and sweep.steps must not repeat values")
    for t in (*sw.steps, sw.tune_max_steps):
        if not 1 <= t <= tok.num_tokens:
            raise ConfigError(f"sweep steps T={t} impossible: T must lie in 1..{tok.num_tokens} (the number of tokens)")
    for where, seeds in (("sweep.decode_seeds", sw.decode_seeds), ("sweep.seeds", sw.seeds)):
        if seeds is not None and (len(set(seeds)) != len(seeds) or not seeds):
            raise ConfigError(f"{where}={list(seeds)} must be one or more distinct integers")
    if sw.n < 2 or sw.tune_n_small < 2 or sw.tune_n_small > sw.n:
        raise ConfigError(f"sweep.n={sw.n} and sweep.tune_n_small={sw.tune_n_small} must satisfy 2 <= tune_n_small <= n")
    cfg.sampling = cfg.sampling.validated(tok.num_tokens, tok.codebook_size)
    for t in (sw.ar_temperature, *sw.ar_temperature_scan):
        ARDecodeConfig(temperature=t, top_k=sw.ar_top_k, top_p=sw.ar_top_p).validated(tok.codebook_size)


def check_extractor(name: str) -> str:
    """``name`` if it is a known feature extractor, else a ConfigError listing them."""
    if name not in EXTRACTOR_NAMES:
        raise ConfigError(f"unknown feature extractor {name!r}; valid: {', '.join(EXTRACTOR_NAMES)}")
    return name


def with_data_sizes(cfg: ExperimentConfig, codebook_size: int, num_tokens: int, num_classes: int) -> ExperimentConfig:
    """Copy of ``cfg`` whose transformer section carries the sizes the data imposes."""
    tr = dataclasses.replace(cfg.transformer, codebook_size=codebook_size, num_tokens=num_tokens,
                             num_classes=num_classes)
    return dataclasses.replace(cfg, transformer=tr.resolved())


def stored_dict(cfg: ExperimentConfig) -> dict:
    """``to_dict`` for what is stored in model files and checkpoints: no tracking URI (it
    names a server and may carry a password; where the runs are logged is not a setting of
    the model)."""
    return {**to_dict(cfg), "mlflow_uri": ""}


def to_dict(cfg: Any) -> dict:
    """Plain-dict view (tuples as lists) for YAML, JSON, MLflow and checkpoints."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


# Settings the config no longer has -> the value that did what the code does now. A stored
# config (a model file) with that value loads; with another it is refused in one line.
RETIRED = {("transformer_train", "blank_share"): 0.0}


def _drop_retired(tree: dict) -> dict:
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for (section, key), neutral in RETIRED.items():
        stored = tree.get(section, {}).pop(key, neutral)
        if stored != neutral:
            raise ConfigError(f"made with {section}.{key}={stored!r}, a setting this version no longer has "
                              f"(only {neutral!r} loads)")
    return tree


def from_dict(tree: dict) -> ExperimentConfig:
    """Rebuild an ExperimentConfig from ``to_dict`` output (e.g. from a checkpoint)."""
    cfg = _build(ExperimentConfig, _drop_retired(tree), "")
    validate(cfg)
    return cfg
