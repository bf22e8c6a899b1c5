"""The one sweep runner. Every sweep kind is a ``Sweep`` subclass that says only what is its
own (its cells, how to run one, its table); the runner does the rest, the same way for all:

1. parse the shared arguments and the config; check the sweep's own arguments before any work;
2. train what is missing and load the models once (transformers, tokenizer, content hashes);
3. load the evaluation (feature extractor and cached reference) once;
4. open the Optuna study (named by everything that changes the numbers) and the MLflow
   parent run; run every cell not yet complete, each in a nested MLflow run with the same
   provenance params;
5. rebuild the sweep's table from the finished MLflow runs and write it atomically.

Sampling is timed the same way in every sweep: ``seconds_per_image`` is the wall time spent
producing the images (transformer decoding and the tokenizer's decoder), feature extraction
and metrics excluded.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna
import torch
from optuna.trial import Trial, TrialState

from maskgit_lab import tracking
from maskgit_lab.checkpoints import load_models
from maskgit_lab.cli import add_device_argument
from maskgit_lab.config import ExperimentConfig, load_config
from maskgit_lab.data import class_names
from maskgit_lab.decoding.generate import check_guidance, for_sampling, iter_images
from maskgit_lab.decoding.sampler import NUMERICS_REVISION, DecodeConfig, upstream_values
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.eval import metrics as M
from maskgit_lab.eval.evaluation import Evaluation, held_out_codes
from maskgit_lab.eval.nll import masked_token_nll
from maskgit_lab.figures import sample_grid_figure
from maskgit_lab.hardware import dtype_name, inference_dtype, machine_model
from maskgit_lab.identity import model_dir, model_file, numeric_settings
from maskgit_lab.io import check_output_dir, content_key, file_sha256, git_commit
from maskgit_lab.lit.pool import plan_workers, train_in_parallel
from maskgit_lab.lit.stages import tokenize, train_tokenizer, train_transformer
from maskgit_lab.redact import redact_url
from maskgit_lab.sweeps import optuna_study as S
from maskgit_lab.tracking import SweepLog, sweep_runs

Tensor = torch.Tensor

# Metric names as logged to MLflow (short, for the UI's columns) -> result keys.
LOGGED = {
    "fid": M.FID, "is": M.IS_MEAN, "precision": M.PRECISION, "recall": M.RECALL,
    "kid": M.KID_MEAN, "class_consistency": M.CLASS_CONSISTENCY,
}
TIMING_NOTE = ("s/img: wall time to produce the images (transformer decoding and the tokenizer's decoder; "
               "feature extraction and metrics excluded)")


def sweep_id(cfg: ExperimentConfig, kind: str, extra: dict | None = None, grid_keys: Iterable[str] = ()) -> str:
    """Content key of a sweep: every setting that changes its numbers (``numeric_settings``),
    what ``extra`` adds (the model files' hashes) and the sampler's ``NUMERICS_REVISION``.

    ``grid_keys`` (settings under ``sweep``) only choose which cells run, not what a cell
    measures: they are left out, so a sweep grown by more seeds or steps keeps its id and
    its finished cells, as are the settings of the other sweep kinds."""
    d = numeric_settings(cfg)
    owner = {"tune_": "tune_sampler", "ar_": "comparison"}
    d["sweep"] = {k: v for k, v in d["sweep"].items()
                  if all(not k.startswith(p) or kind == o for p, o in owner.items()) and k not in grid_keys}
    return f"{cfg.name}.{kind}.{content_key([kind, d, extra or {}, {'numerics': NUMERICS_REVISION}], 10)}"


def grid_study_name(sid: str, space: dict[str, list]) -> str:
    """The Optuna study of one grid of a sweep. Optuna fixes a categorical parameter's
    choices for the life of a study, so each grid (the sweep's id and the grid's values) has
    its own; cells finished under another grid of the same sweep are taken from MLflow."""
    return f"{sid}.{content_key([space], 8)}"


def schedule_config(cfg: ExperimentConfig, schedule: str) -> ExperimentConfig:
    """The experiment with the transformer trained under ``schedule``."""
    return replace(cfg, transformer_train=replace(cfg.transformer_train, schedule=schedule))


def ensure_models(cfg: ExperimentConfig, schedules: Iterable[str], log: bool = True) -> dict[str, Path]:
    """Train what is missing (tokenizer, token cache, one transformer per schedule), reuse the
    rest. Several missing transformers train side by side where ``train_workers`` allows."""
    train_tokenizer(cfg, log=log)
    cfgs = {s: schedule_config(cfg, s) for s in schedules}
    missing = [s for s, c in cfgs.items() if not model_file(c, "transformer").is_file()]
    workers, threads = plan_workers(cfg, len(missing))
    if workers > 1:
        if not cfg.data.token_shards:
            tokenize(cfg)  # the token cache, once, before the workers read it
        train_in_parallel([(model_dir(cfgs[s], "transformer").name, cfgs[s]) for s in missing],
                          workers, threads, log)
    for c in cfgs.values():  # trains one at a time what is still missing; checks and reuses the rest
        train_transformer(c, log=log)
    return {s: model_file(c, "transformer") for s, c in cfgs.items()}


def decode_params(dcfg: DecodeConfig, logged: dict | None = None) -> dict:
    """A decode's settings as MLflow params: the suite's (``decode.*``) and each upstream's
    names for them (``upstream.*``); a setting already in ``logged`` under its own name with the
    same value (a sweep's axis) is not repeated."""
    logged = logged or {}
    return {**{f"decode.{k}": v for k, v in dcfg.__dict__.items() if not (k in logged and logged[k] == v)},
            **{f"upstream.{k}": v for k, v in upstream_values(dcfg).items()}}


def class_rows(images: Tensor, num_classes: int) -> Tensor:
    """Images made for labels arange(n) % C, reordered so each class fills one grid row."""
    k = images.shape[0] // num_classes
    x = images[: k * num_classes]
    return x.reshape(k, num_classes, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments every sweep shares."""
    parser.add_argument("--config", default="experiments/fmnist.yaml", help="experiment YAML")
    parser.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite:///<runs>/optuna.db)")
    parser.add_argument("--checkpoint", help="use this transformer file instead of the config's trained one")
    add_device_argument(parser)
    parser.add_argument("--out-dir", help="default: results/<experiment>/<the kind's folder>")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. sweep.n=2000 'sweep.steps=[4,8]'")


@dataclass
class LoadedModel:
    """A trained transformer with its tokenizer, config, file metadata and content hash."""

    transformer: torch.nn.Module
    tokenizer: torch.nn.Module
    cfg: ExperimentConfig
    meta: dict
    sha: str
    sampler: torch.nn.Module | None = None  # the transformer and tokenizer at the sampling precision
    decoder: torch.nn.Module | None = None

    @property
    def num_classes(self) -> int:
        return self.transformer.cfg.num_classes


class Sweep:
    """One sweep kind. Subclasses set ``kind`` and ``title``. A grid kind implements
    ``space``, ``run_cell``, ``cell_name``, ``cell_line`` and ``write`` (the base raises
    NotImplementedError for them); a kind with its own search (the tuner's TPE) overrides
    ``search`` instead. The rest has defaults."""

    kind: ClassVar[str]
    title: ClassVar[str]
    table_file: ClassVar[str]
    folder: ClassVar[str]  # results/<experiment>/<folder> unless --out-dir says otherwise
    # Settings under ``sweep`` that choose which cells run (seeds, T values, ...), not what a
    # cell measures: left out of the sweep's id, so growing the grid reuses finished cells.
    grid_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ExperimentConfig, args: argparse.Namespace) -> None:
        self.cfg, self.args, self.device = cfg, args, args.device
        self.n = cfg.sweep.n
        self.out_dir = check_output_dir(args.out_dir or f"results/{cfg.name}/{self.folder}", "--out-dir")
        self.models: dict[str, LoadedModel] = {}
        self._nll: dict[tuple[str, str], dict] = {}
        self._held_out: tuple[Tensor, Tensor] | None = None
        self._finished = None  # finished_runs(), once the search is over

    # ---- what a sweep kind says about itself

    @classmethod
    def create(cls, cfg: ExperimentConfig, args: argparse.Namespace) -> Sweep:
        """The sweep the command line asks for (a kind may hand over to a variant of itself)."""
        return cls(cfg, args)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The kind's own command-line arguments."""

    @classmethod
    def config_defaults(cls) -> list[str]:
        """The kind's own defaults, as overrides the config file and the command line override."""
        return []

    @classmethod
    def config_overrides(cls, args: argparse.Namespace) -> list[str]:
        """Config overrides implied by the kind's own arguments."""
        return []

    def check(self) -> None:
        """Refuse bad arguments before any long work (raise ConfigError)."""

    def model_files(self) -> dict[str, Path]:
        """The transformer files to load, by key ("*": one model for every cell); missing
        ones are trained first. Default: ``--checkpoint``, else the config's trained model."""
        if self.args.checkpoint:
            if not Path(self.args.checkpoint).is_file():
                raise ConfigError(f"checkpoint {self.args.checkpoint!r} not found")
            return {"*": Path(self.args.checkpoint)}
        schedule = self.cfg.transformer_train.schedule
        return {"*": ensure_models(self.cfg, [schedule])[schedule]}

    def prepare(self) -> None:
        """Work that decides the sweep's settings once models and evaluation are loaded (runs
        before the sweep's id is computed)."""

    def identity(self) -> dict:
        """What, beyond the config, makes this sweep's numbers (the model files' hashes)."""
        return {"models": {k: m.sha for k, m in self.models.items()}}

    def describe(self) -> dict:
        """Facts about the sweep stored on its MLflow parent and used in its table's caption."""
        return {}

    def run_name(self) -> str:
        return self.kind

    def space(self) -> dict[str, list]:
        raise NotImplementedError

    def cell_name(self, params: dict) -> str:
        raise NotImplementedError

    def view_params(self) -> list[str]:
        """The params the UI's view of the sweep's cells shows beside their metrics: the
        cells' grid coordinates."""
        return list(dict.fromkeys(k for space in self.spaces() for k in space))

    def compared_params(self) -> list[str]:
        """The params a cell of the main grid has (the last of ``spaces()``): its Compare link
        shows those cells, not the reference rows."""
        return list(self.spaces()[-1])

    def cell_params(self, params: dict) -> dict:
        return dict(params)

    def run_cell(self, params: dict, run_id: str) -> dict:
        raise NotImplementedError

    def cell_line(self, params: dict, rec: dict) -> str:
        raise NotImplementedError

    def banner(self) -> str:
        return f"{self.kind} {self.sid}: N={self.n}, {self.evaluation.ext.name}"

    @staticmethod
    def write(df, out_dir: Path, info: dict) -> str:
        """Write the kind's table(s) from its finished MLflow runs; return the Markdown."""
        raise NotImplementedError

    # ---- shared machinery

    def model(self, key: str = "*") -> LoadedModel:
        """The model of ``key`` (a schedule in per-schedule mode), else the one shared model;
        with no key, any of them (they share the tokenizer and the geometry)."""
        return self.models.get(key) or self.models.get("*") or next(iter(self.models.values()))

    def setup(self, storage) -> None:
        """Models, evaluation, the study's name and the MLflow parent run."""
        self.storage = storage
        self.dtype, why = inference_dtype(self.cfg.inference_precision, self.device)
        print(f"sampling precision {dtype_name(self.dtype)} ({why})", flush=True)
        for key, f in self.model_files().items():
            transformer, tok, tcfg, meta = load_models(f, device=self.device)
            self.models[key] = LoadedModel(transformer, tok, tcfg, meta, file_sha256(f),
                                           for_sampling(transformer, self.dtype), for_sampling(tok, self.dtype))
        self.evaluation = Evaluation(self.cfg, self.n, None, self.device, self.cfg.sweep.batch_size)
        self.git_commit = git_commit() or "unknown"
        self.machine = machine_model(self.device)
        self.prepare()
        self.sid = sweep_id(self.cfg, self.kind, self.identity(), self.grid_keys)
        self.info = {"experiment": self.cfg.name, "n": self.n, "seeds": list(self.cfg.sweep.seeds),
                     "extractor": self.evaluation.ext.name, "sweep_id": self.sid,
                     "sampling_precision": dtype_name(self.dtype), **self.describe()}
        self.mlog = SweepLog(self.cfg, self.sid, self.kind, self.run_name(), self.info,
                             mutable=[k for k in self.info if k in self.grid_keys], view_params=self.view_params(),
                             compared_params=self.compared_params())

    def provenance(self, key: str = "*", seed: int | None = None) -> dict:
        """What identifies a cell's inputs, logged as params of every nested run."""
        m = self.model(key)
        return {"n": self.n, "seed": self.cfg.sweep.seed if seed is None else seed,
                "extractor": self.evaluation.ext.name,
                "extractor_identity": self.evaluation.ext.identity, "reference": self.evaluation.reference_name,
                "checkpoint_sha": m.sha, "tokenizer_sha": m.meta.get("tokenizer_sha"), **self.machine_params()}

    def machine_params(self) -> dict:
        """Where and when a cell is measured: code version, precision, machine, date."""
        return {"git_commit": self.git_commit, "sampling_precision": dtype_name(self.dtype),
                "machine": self.machine, "date": time.strftime("%Y-%m-%d")}

    def held_out_tokenizer(self) -> tuple[torch.nn.Module, str]:
        """(the tokenizer of the sweep's models, its content hash)."""
        m = self.model()
        return m.tokenizer, m.meta["tokenizer_sha"]

    def held_out(self) -> tuple[Tensor, Tensor]:
        """The first ``sweep.nll_sequences`` test token grids and labels (loaded once)."""
        if self._held_out is None:
            k = self.cfg.sweep.nll_sequences
            codes, labels = held_out_codes(self.cfg, *self.held_out_tokenizer(), limit=k)
            self._held_out = (codes[:k], labels[:k])
        return self._held_out

    def nll(self, schedule: str, key: str = "*") -> dict:
        """Masked-token NLL of a model on the held-out tokens under ``schedule``'s masking (cached)."""
        model_key = key if key in self.models else "*"
        if (schedule, model_key) not in self._nll:
            self._nll[(schedule, model_key)] = masked_token_nll(
                self.model(model_key).transformer, *self.held_out(), schedule,
                draws=self.cfg.evaluator.nll_draws, seed=self.cfg.sweep.seed)
        return self._nll[(schedule, model_key)]

    def score(self, images: Iterator[Tensor], labels: Tensor | None, keep: int = 0, desc: str | None = None,
              seed: int | None = None) -> dict:
        """Score a stream of image batches against the reference -> {"record", "images", "result"}.

        The record holds the logged metrics, ``seconds_per_image`` (time inside the stream,
        i.e. producing the images) and ``n``; ``images`` the first ``keep`` images."""
        spent = [0.0, 0]
        kept: list[Tensor] = []

        def timed() -> Iterator[Tensor]:
            while True:
                t0 = time.perf_counter()
                try:
                    x = next(images)
                except StopIteration:
                    return
                spent[0] += time.perf_counter() - t0
                spent[1] += x.shape[0]
                if sum(len(k) for k in kept) < keep:
                    kept.append(x)
                yield x

        feats = self.evaluation.ext(timed(), total=len(labels) if labels is not None else None, desc=desc)
        result = self.evaluation.score(feats, self.cfg.sweep.seed if seed is None else seed, labels)
        record = {short: result["metrics"].get(key) for short, key in LOGGED.items()}
        record.update(seconds_per_image=spent[0] / max(1, spent[1]), n=spent[1])
        return {"record": record, "images": torch.cat(kept)[:keep] if keep else None, "result": result}

    def sample_and_score(self, dcfg: DecodeConfig, key: str = "*", n: int | None = None, keep: int = 0,
                         seed: int | None = None) -> dict:
        """``n`` class-balanced MaskGIT samples (labels arange(n) % C) drawn from ``seed`` (default:
        sweep.seed), scored against the reference."""
        m = self.model(key)
        check_guidance(m.cfg.transformer_train.class_dropout, dcfg)
        n = n or self.n
        seed = self.cfg.sweep.seed if seed is None else seed
        labels = torch.arange(n) % m.num_classes
        stream = iter_images(m.sampler, m.decoder, labels, dcfg, seed, self.cfg.sweep.batch_size)
        return self.score(stream, labels, keep, seed=seed)

    def log_grid(self, run_id: str, images: Tensor, title: str) -> None:
        """A sample grid (one row per class) as the run's ``samples.png``."""
        classes = self.model().num_classes
        names = class_names(self.cfg, classes)
        self.mlog.log_file(run_id, "samples.png",
                           lambda p: sample_grid_figure(class_rows(images, len(names)), names, title, p))

    def grid_keep(self) -> int:
        return self.cfg.sweep.grid_per_class * self.model().num_classes

    def spaces(self) -> list[dict[str, list]]:
        """The sweep's grids, run in this order (a grid kind's cells are their union)."""
        return [self.space()]

    def search(self) -> None:
        """Run every cell of ``spaces()`` not yet complete (Optuna grids, resumable, shared)."""
        finished = []
        for space in self.spaces():
            finished.append((self.run_space(space), space))
        S.settle(finished[:-1])  # the earlier grids again: a worker may have died there after we left

    def run_space(self, space: dict[str, list]) -> optuna.Study:
        """One resumable Optuna grid over ``space``: each cell in its own nested MLflow run.
        A cell already finished in MLflow under this sweep's id (by a smaller or an other
        grid) is taken from there, not measured again."""
        st = S.grid_study(grid_study_name(self.sid, space), self.storage, space)
        total = int(np.prod([len(v) for v in space.values()]))
        finished = self.finished_cells()
        reused = sum(S.cell_key(p, list(space)) in finished for p in S.grid_cells(space))
        if reused:
            print(f"{reused} of {total} cells already measured (MLflow runs of sweep {self.sid}); "
                  f"{total - reused} to measure", flush=True)
        started = time.perf_counter()
        ran = 0

        def run_cell(trial: Trial, params: dict[str, Any]) -> float:
            nonlocal ran
            rec, note = self.measure(params, S.cell_key(params, list(space)), finished)
            ran += not note
            for k, v in rec.items():
                trial.set_user_attr(k, v)
            done = len(st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) + 1
            left = total - done
            eta = (f", ETA {(time.perf_counter() - started) / ran * left / 60:.1f} min"
                   if ran and left and not note else "")
            print(f"[{done}/{total}{eta}] {self.cell_line(params, rec)}{note}", flush=True)
            return rec["fid"]

        S.run_grid(st, space, run_cell)
        return st

    def finished_cells(self) -> dict[str, dict[str, float]]:
        """Cells measured before, by cell key: their metrics (MLflow's finished cell runs)."""
        return self.mlog.finished_cells()

    def measure(self, params: dict, key: str, finished: dict[str, dict]) -> tuple[dict, str]:
        """(record, note) of one grid trial: a finished cell is reused (note " (reused)"), a new
        one runs in its own nested MLflow run (note "")."""
        if key in finished:
            return finished[key], " (reused)"
        return self.mlog.cell(key, self.cell_name(params), self.cell_params(params),
                              lambda run_id: self.run_cell(params, run_id)), ""

    @staticmethod
    def select(df, info: dict):
        """The finished cells of the grid ``info`` describes. A kind with ``grid_keys``
        keeps cells of its other grids (more seeds, other T) under the same sweep id, so it
        filters here; the rest have one grid per id."""
        return df

    def headline(self) -> tuple[dict[str, float], dict[str, str]]:
        """The sweep's headline for its MLflow parent: the lowest mean FID over seeds among its
        cells (a pointer into the table, whose intervals say how much it means) and that cell."""
        df = self.finished_runs()
        keys = [k for k in self.space() if k != "seed" and k in df]
        if "fid" not in df or not keys:
            return {}, {}
        means = df.assign(fid=df["fid"].astype(float)).groupby(keys)["fid"].mean()
        best = means.idxmin()
        best = best if isinstance(best, tuple) else (best,)
        return {"best_fid": float(means.min())}, {"best_cell": ",".join(f"{k}={v}" for k, v in zip(keys, best,
                                                                                                 strict=True))}

    def finished_runs(self):
        """The finished MLflow cell runs of the current grid (read once, after the search)."""
        if self._finished is None:
            self._finished = self.select(sweep_runs(self.cfg.tracking_uri, self.mlog.experiment, self.sid), self.info)
        return self._finished

    def finish(self) -> str:
        """Rebuild the table from the finished MLflow runs; return it as Markdown."""
        return self.write(self.finished_runs(), self.out_dir, self.info)


def sweep_main(kind: type[Sweep]) -> Callable[[list[str] | None], int]:
    """The command of a sweep kind: ``python sweeps/<kind>.py``."""

    @cli_errors
    def main(argv: list[str] | None = None) -> int:
        parser = ArgumentParser(prog=f"python sweeps/{kind.kind}.py", description=kind.title)
        add_sweep_arguments(parser)
        kind.add_arguments(parser)
        args = parser.parse_intermixed_args(argv)
        cfg = load_config(args.config, kind.config_defaults() + list(args.overrides) + kind.config_overrides(args))
        sweep = kind.create(cfg, args)
        sweep.check()
        tracking.preflight(cfg)
        storage = S.open_storage(args.storage, cfg.runs_dir)
        torch.set_float32_matmul_precision("high")
        wall = time.time()
        sweep.setup(storage)
        print(f"{sweep.banner()}; Optuna study in {redact_url(S.storage_url(args.storage, cfg.runs_dir))}",
              flush=True)
        try:
            sweep.search()
            text = sweep.finish()
        except KeyboardInterrupt:
            sweep.mlog.end("KILLED")
            raise
        except BaseException:
            sweep.mlog.end("FAILED")
            raise
        metrics, tags = sweep.headline()
        sweep.mlog.end("FINISHED", metrics, tags)
        print(text)
        print(f"wall time {time.time() - wall:.0f} s; results in {sweep.out_dir}/{sweep.table_file}")
        print("\n".join(sweep.mlog.links()), flush=True)
        return 0

    return main

