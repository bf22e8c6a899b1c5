"""The mask-schedule ablation (the paper's Table 3 and Figure 8) as a resumable Optuna grid.

Cells: every schedule x T x seed. A cell draws N class-balanced samples from its seed and
scores them against the first N test images (FID, IS, precision, recall, KID, class
consistency); each schedule also gets the NLL of held-out test tokens under its training
masking. Reference rows at the same N, one per seed: the real-vs-real floor (N validation
images drawn by the seed, which trained neither the models nor the evaluator) and the
tokenizer ceiling (their reconstructions).

Modes: ``train`` (the default, the paper's design) trains one transformer per schedule and
samples each with its own schedule; ``decode`` uses one trained transformer and varies the
schedule at sampling only, a different question. Missing models are trained first.

``--trainings K`` (``sweep.trainings``) makes the table over K trainings (``OverTrainings``):
every schedule's transformer trained with training seeds 0..K-1, each sampled on the same
seeds, the intervals carrying the variation between trainings. Its units of work are
(training, schedule): train that model if missing, then measure its cells. The cells are
recorded in the results folder, so trainings finished once are never computed again.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskgit_lab.checkpoints import load_model, tokenizer_identity
from maskgit_lab.decoding.generate import check_guidance, codes_to_images, for_sampling
from maskgit_lab.errors import ConfigError
from maskgit_lab.identity import model_file
from maskgit_lab.io import file_sha256
from maskgit_lab.lit.stages import tokenize, train_tokenizer
from maskgit_lab.sweeps import optuna_study as S
from maskgit_lab.sweeps import table3 as T3
from maskgit_lab.sweeps import trainings as tr
from maskgit_lab.sweeps.common import LoadedModel, Sweep, decode_params, ensure_models, sweep_main
from maskgit_lab.tracking import sweep_runs

REFERENCES = T3.REFERENCES


class ScheduleAblation(Sweep):
    kind = "schedule_ablation"
    title = "Regenerate the paper's Table 3 (mask schedule x decoding steps) on the configured dataset."
    table_file = "schedule_ablation.md"
    folder = "table3"
    grid_keys = ("schedules", "steps", "seeds", "decode_seeds", "report_steps", "trainings")

    @classmethod
    def create(cls, cfg, args) -> Sweep:
        return OverTrainings(cfg, args) if cfg.sweep.trainings else cls(cfg, args)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--mode", choices=("train", "decode"),
                            help="default: the config's sweep.mode (train), or decode with --checkpoint")
        parser.add_argument("--trainings", type=int, metavar="K",
                            help="the table over K trainings of every schedule's transformer (training seeds "
                                 "0..K-1), with the variation between trainings in its intervals")

    @classmethod
    def config_overrides(cls, args: argparse.Namespace) -> list[str]:
        out = [f"sweep.trainings={args.trainings}"] if args.trainings is not None else []
        if args.mode:
            return [*out, f"sweep.mode={args.mode}"]
        # one given model can only be swept in decode mode
        return [*out, "sweep.mode=decode"] if args.checkpoint else out

    @property
    def mode(self) -> str:
        return self.cfg.sweep.mode

    def check(self) -> None:
        if self.mode == "train" and self.args.checkpoint:
            raise ConfigError("--checkpoint names one model: it goes with --mode decode, not --mode train")
        check_guidance(self.cfg.transformer_train.class_dropout, self.cfg.sampling)

    def model_files(self) -> dict[str, Path]:
        if self.mode == "train":
            return ensure_models(self.cfg, self.cfg.sweep.schedules)
        return super().model_files()

    def num_tokens(self) -> int:
        return self.model().transformer.cfg.num_tokens

    def describe(self) -> dict:
        sw = self.cfg.sweep
        report = min(sw.steps, key=lambda t: (abs(t - sw.report_steps), t))
        return {"mode": self.mode, "schedules": list(sw.schedules), "steps": list(sw.steps), "report_steps": report,
                "num_tokens": self.num_tokens(), "train_schedule": self.train_schedule(sw.schedules[0]),
                "choice_temperature": self.cfg.sampling.choice_temperature}

    def train_schedule(self, schedule: str) -> str:
        return self.model(schedule).cfg.transformer_train.schedule

    def run_name(self) -> str:
        return f"schedule_ablation-{self.mode}"

    def banner(self) -> str:
        sw = self.cfg.sweep
        cells = len(sw.schedules) * len(sw.steps) * len(sw.seeds)
        return (f"schedule ablation {self.sid}: {cells} cells + {2 * len(sw.seeds)} reference cells ({self.mode} "
                f"mode, N={self.n}, seeds {list(sw.seeds)}, {self.evaluation.ext.name})")

    def space(self) -> dict[str, list]:
        sw = self.cfg.sweep
        return {"schedule": list(sw.schedules), "steps": list(sw.steps), "seed": list(sw.seeds)}

    def spaces(self) -> list[dict[str, list]]:
        """The reference rows first (a grid of their own), then every schedule x T x seed."""
        return [{"reference_row": list(REFERENCES), "seed": list(self.cfg.sweep.seeds)}, self.space()]

    def model_key(self, params: dict) -> str:
        """The key of the model a cell samples (its schedule's, in train mode)."""
        return params["schedule"]

    def decode_config(self, params: dict):
        return replace(self.cfg.sampling, schedule=params["schedule"], steps=params["steps"]).validated(
            self.num_tokens())

    def cell_name(self, params: dict) -> str:
        if "reference_row" in params:
            return f"{params['reference_row']} seed={params['seed']}"
        head = f"training {params['training']}: " if "training" in params else ""
        return f"{head}{params['schedule']} T={params['steps']} seed={params['seed']}"

    def cell_params(self, params: dict) -> dict:
        if "reference_row" in params:
            return {**params, "label": REFERENCES[params["reference_row"]], **self.reference_provenance(params["seed"])}
        key = self.model_key(params)
        return {**params, **decode_params(self.decode_config(params), params), "mode": self.mode,
                "train_schedule": self.model(key).cfg.transformer_train.schedule,
                **self.provenance(key, seed=params["seed"])}

    def reference_provenance(self, seed: int) -> dict:
        return self.provenance(seed=seed)

    def encoder(self):
        """The tokenizer that makes the ceiling row's reconstructions."""
        return self.model().tokenizer

    def reference_images(self, kind: str, seed: int):
        """N validation images drawn by ``seed`` (or their reconstructions), in batches, with labels."""
        val = self.evaluation.datamodule.dataset("val")
        if len(val) < self.n:
            raise ConfigError(f"the reference rows draw N={self.n} validation images; the split holds {len(val)}")
        idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[: self.n]
        labels = torch.tensor([int(val[i][1]) for i in idx.tolist()])
        tok = self.encoder()

        def stream():
            for chunk in idx.split(self.cfg.sweep.batch_size):
                x = torch.stack([val[i][0] for i in chunk.tolist()])
                if kind == "reconstruction":
                    with torch.inference_mode():
                        x = codes_to_images(tok, tok.encode(x.to(self.device)).flatten(1)).float().cpu()
                yield x

        return stream(), labels

    def run_cell(self, params: dict, run_id: str) -> dict:
        if "reference_row" in params:
            images, labels = self.reference_images(params["reference_row"], params["seed"])
            return self.score(images, labels, keep=0, seed=params["seed"])["record"]
        s, key = params["schedule"], self.model_key(params)
        out = self.sample_and_score(self.decode_config(params), key=key, keep=self.grid_keep(), seed=params["seed"])
        self.log_grid(run_id, out["images"], f"{self.cell_name(params)}")
        return {**out["record"], "nll": self.nll(s, key=key)["nll"]}

    def cell_line(self, params: dict, rec: dict) -> str:
        head = (f"{params['reference_row']:25s}" if "reference_row" in params
                else f"{params['schedule']:12s} T={params['steps']:<3d}")
        line = (f"{head} seed {params['seed']}  FID {rec['fid']:8.2f}  IS {rec['is']:.2f}  "
                f"P {rec['precision']:.3f}  R {rec['recall']:.3f}  CC {rec['class_consistency']:.3f}")
        if "nll" in rec:
            line += f"  NLL {rec['nll']:.3f}  {rec['seconds_per_image'] * 1000:.2f} ms/img"
        return line

    @staticmethod
    def select(df: pd.DataFrame, info: dict) -> pd.DataFrame:
        return T3.select_grid(df, info)

    @staticmethod
    def write(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
        summary = T3.write_one_training(df, out_dir, info)
        lines = [f"T={t}: best {b['schedule']} FID {b['fid']:.2f}; not significantly different: "
                 f"{', '.join(b['not_significantly_worse']) or 'none'}" for t, b in summary["best_per_steps"].items()]
        return (Path(out_dir) / "schedule_ablation.md").read_text() + "\n" + "\n".join(lines)


class OverTrainings(ScheduleAblation):
    """Table 3 over K trainings. Units of work: (training, schedule), each trains its model if
    missing and measures its cells; the results folder records every finished cell."""

    kind = "schedule_ablation_trainings"
    title = "Table 3 over several trainings of every schedule's transformer."
    folder = "table3_trainings"

    def __init__(self, cfg, args) -> None:
        # the training seed is the table's axis, not one of its settings
        super().__init__(replace(cfg, transformer_train=replace(cfg.transformer_train, seed=0)), args)
        self.given_seed = cfg.transformer_train.seed
        self.recorded = pd.DataFrame()

    def check(self) -> None:
        super().check()
        k = self.cfg.sweep.trainings
        if self.mode != "train" or self.args.checkpoint:
            raise ConfigError("--trainings trains every schedule's model K times: it goes with --mode train and "
                              "no --checkpoint")
        if self.given_seed:
            raise ConfigError(f"--trainings {k} trains with training seeds 0..{k - 1}; leave transformer_train.seed "
                              f"unset (it is {self.given_seed})")

    def model_files(self) -> dict[str, Path]:
        """No transformer up front (each unit trains and loads its own): the tokenizer and the
        token cache only."""
        train_tokenizer(self.cfg)
        if not self.cfg.data.token_shards:
            tokenize(self.cfg)
        tok_file = model_file(self.cfg, "tokenizer")
        tok, _, _ = load_model(tok_file, "tokenizer")
        self.tokenizer, self.tokenizer_sha = tok.to(self.device).eval(), tokenizer_identity(tok_file)
        return {}

    def describe(self) -> dict:
        return {**super().describe(), "trainings": self.cfg.sweep.trainings, "tokenizer_sha": self.tokenizer_sha}

    def setup(self, storage) -> None:
        super().setup(storage)
        self.recorded = tr.check_record(self.out_dir, self.sid)
        if len(self.recorded):
            units = self.recorded.dropna(subset=["training"]).groupby(["training", "schedule"]).ngroups
            print(f"{self.out_dir}: {len(self.recorded)} cells recorded ({units} trained models)", flush=True)

    def identity(self) -> dict:
        """The tokenizer and the evaluator the cells come from (the models are the table's
        units, made from the config and a training seed)."""
        return {"tokenizer": self.tokenizer_sha, "extractor": self.evaluation.ext.identity}

    def num_tokens(self) -> int:
        return self.cfg.tokenizer.num_tokens

    def train_schedule(self, schedule: str) -> str:
        return schedule

    def encoder(self):
        return self.tokenizer

    def held_out_tokenizer(self):
        return self.tokenizer, self.tokenizer_sha

    def reference_provenance(self, seed: int) -> dict:
        return {"n": self.n, "seed": seed, "extractor": self.evaluation.ext.name,
                "extractor_identity": self.evaluation.ext.identity, "reference": self.evaluation.reference_name,
                "tokenizer_sha": self.tokenizer_sha, **self.machine_params()}

    def banner(self) -> str:
        sw = self.cfg.sweep
        return (f"Table 3 over {sw.trainings} trainings ({self.sid}): {len(sw.schedules)} schedules x "
                f"{sw.trainings} trainings = {len(sw.schedules) * sw.trainings} models, each measured at T = "
                f"{list(sw.steps)} on seeds {list(sw.seeds)}; {2 * len(sw.seeds)} reference cells "
                f"(N={self.n}, {self.evaluation.ext.name})")

    def run_name(self) -> str:
        return "schedule_ablation-trainings"

    def spaces(self) -> list[dict[str, list]]:
        return [{"reference_row": list(REFERENCES), "seed": list(self.cfg.sweep.seeds)},
                {"training": list(range(self.cfg.sweep.trainings)), "schedule": list(self.cfg.sweep.schedules)}]

    def space(self) -> dict[str, list]:
        return self.spaces()[1]

    def model_key(self, params: dict) -> str:
        return f"{params['schedule']}@{params['training']}"

    def view_params(self) -> list[str]:
        return ["reference_row", "training", "schedule", "steps", "seed"]

    def unit_config(self, schedule: str, training: int):
        return replace(self.cfg, transformer_train=replace(self.cfg.transformer_train, schedule=schedule,
                                                           seed=training))

    def finished_cells(self) -> dict[str, dict[str, float]]:
        """MLflow's finished cells of this table and the cells recorded in its results folder."""
        out = super().finished_cells()
        for _, r in self.recorded.iterrows():
            out.setdefault(record_key(r), {m: float(r[m]) for m in tr.METRICS if m in r and pd.notna(r[m])})
        return out

    def measure(self, params: dict, key: str, finished: dict[str, dict]) -> tuple[dict, str]:
        if "training" not in params:
            return super().measure(params, key, finished)
        k, s, sw = int(params["training"]), params["schedule"], self.cfg.sweep
        cells = [{"training": k, "schedule": s, "steps": t, "seed": seed} for t in sw.steps for seed in sw.seeds]
        todo = [c for c in cells if S.cell_key(c, list(c)) not in finished]
        done: dict[str, dict] = {}
        if todo:
            file = ensure_models(self.unit_config(s, k), [s])[s]
            self.load(self.model_key(params), file)
            for i, c in enumerate(todo):
                key_c = S.cell_key(c, list(c))
                done[key_c] = self.mlog.cell(key_c, self.cell_name(c), self.cell_params(c),
                                             lambda run_id, c=c: self.run_cell(c, run_id))
                print(f"  ({i + 1}/{len(todo)}) training {k} {self.cell_line(c, done[key_c])}", flush=True)
            self.record_cells(todo, done)
            del self.models[self.model_key(params)]
            self._nll.clear()
        fids = [(done.get(S.cell_key(c, list(c))) or finished[S.cell_key(c, list(c))])["fid"] for c in cells
                if c["steps"] == self.info["report_steps"]]
        return {"fid": float(np.mean(fids))}, "" if todo else " (recorded)"

    def cell_line(self, params: dict, rec: dict) -> str:
        if "training" in params and "steps" not in params:
            return (f"training {params['training']} {params['schedule']:12s} mean FID at T={self.info['report_steps']} "
                    f"{rec['fid']:.2f}")
        return super().cell_line(params, rec)

    def load(self, key: str, file: Path) -> None:
        """Load one unit's transformer (with the shared tokenizer) for sampling."""
        transformer, tcfg, meta = load_model(file, "transformer")
        if meta.get("tokenizer_sha") != self.tokenizer_sha:
            raise ConfigError(f"{file} was trained on another tokenizer than {self.tokenizer_sha}")
        transformer = transformer.to(self.device)
        self.models[key] = LoadedModel(transformer, self.tokenizer, tcfg, meta, file_sha256(file),
                                       for_sampling(transformer, self.dtype), for_sampling(self.tokenizer, self.dtype))

    def record_cells(self, cells: list[dict], recs: dict[str, dict]) -> None:
        """Add a unit's new cells (with their provenance) to the results folder's record."""
        rows = []
        for c in cells:
            prov = self.provenance(self.model_key(c), seed=c["seed"])
            rows.append({**c, **recs[S.cell_key(c, list(c))], **{k: prov[k] for k in tr.RECORDED if k in prov}})
        self.recorded = tr.record(self.out_dir, self.record_info(), tr.normalize(pd.DataFrame(rows)))

    def record_info(self) -> dict:
        keep = ("experiment", "n", "seeds", "extractor", "schedules", "steps", "report_steps", "num_tokens",
                "choice_temperature", "tokenizer_sha", "trainings", "sampling_precision")
        return {"table_id": self.sid, **{k: self.info[k] for k in keep if k in self.info}}

    def grid_keep(self) -> int:
        return self.cfg.sweep.grid_per_class * self.model().num_classes

    def headline(self) -> tuple[dict[str, float], dict[str, str]]:
        summary = getattr(self, "summary", None)
        if not summary:
            return {}, {}
        t = str(self.info["report_steps"])
        best = summary["best_per_steps"][t]
        return ({"best_fid": summary["schedules"][best][t]["mean"]},
                {"best_cell": f"schedule={best},steps={t}", "trainings": str(summary["trainings"])})

    def finished_runs(self) -> pd.DataFrame:
        """Every cell of this table: recorded ones and MLflow's (recorded first), all recorded now."""
        if self._finished is None:
            runs = sweep_runs(self.cfg.tracking_uri, self.mlog.experiment, self.sid, allow_empty=True)
            self.recorded = tr.record(self.out_dir, self.record_info(), tr.normalize(runs))
            self._finished = self.recorded
        return self._finished

    def finish(self) -> str:
        self.summary = T3.write_over_trainings(self.finished_runs(), self.out_dir, self.record_info())
        return (self.out_dir / self.table_file).read_text()

    @staticmethod
    def write(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
        """The table over the grid's trainings, from ``df`` and the folder's recorded cells."""
        T3.write_over_trainings(df, out_dir, {k: v for k, v in info.items() if k != "sweep_id"}
                                | {"table_id": info.get("table_id") or info["sweep_id"]})
        return (Path(out_dir) / "schedule_ablation.md").read_text()


def record_key(row: pd.Series) -> str:
    """The cell key (as in Optuna and MLflow) of a recorded cell."""
    if "reference_row" in row and pd.notna(row["reference_row"]):
        return f"reference_row={row['reference_row']},seed={int(row['seed'])}"
    return (f"training={int(row['training'])},schedule={row['schedule']},steps={int(row['steps'])},"
            f"seed={int(row['seed'])}")


main = sweep_main(ScheduleAblation)
