"""The mask-schedule ablation (the paper's Table 3 and Figure 8) as a resumable Optuna grid.

For each schedule x T cell: N class-balanced samples from one seed, scored against the
first N test images (FID, IS, precision, recall, KID, class consistency), the NLL of the
held-out test tokens under the schedule's training masking, and the sampling time per
image. Each schedule's best T (lowest FID) makes its Table 3 row.

Modes: ``decode`` uses one trained transformer and varies the schedule at sampling only;
``train`` trains one transformer per schedule (what the paper did; only then does the NLL
column compare models). Missing checkpoints are trained first, existing ones reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from maskgit_lab.config import ExperimentConfig, to_dict
from maskgit_lab.errors import ConfigError, add_device_argument
from maskgit_lab.eval import metrics as M
from maskgit_lab.io import file_sha256, git_commit

# The paper's Table 3 (ImageNet 256, one model trained per schedule): best T, FID, IS, NLL.
PAPER_TABLE3 = {
    "exponential": (8, 7.89, 156.3, 4.83),
    "cubic": (9, 7.26, 165.2, 4.63),
    "square": (10, 6.35, 179.9, 4.38),
    "cosine": (10, 6.06, 181.5, 4.22),
    "linear": (16, 7.51, 113.2, 3.75),
    "square_root": (32, 12.33, 99.0, 3.34),
    "logarithmic": (60, 29.17, 47.9, 3.08),
}

# Metric names as logged to MLflow (short, for the UI's columns) -> result keys.
LOGGED = {
    "fid": M.FID, "is": M.IS_MEAN, "precision": M.PRECISION, "recall": M.RECALL,
    "kid": M.KID_MEAN, "class_consistency": M.CLASS_CONSISTENCY,
}


def sweep_id(cfg: ExperimentConfig, kind: str, extra: dict | None = None) -> str:
    """Content key of a sweep: everything that changes its numbers (not paths or URIs)."""
    d = to_dict(cfg)
    for k in ("runs_dir", "mlflow_uri", "name", "strategy", "num_nodes"):
        d.pop(k)
    # settings of the other sweep kinds do not change this one's numbers
    owner = {"tune_": "tune_sampler", "ar_": "comparison"}
    d["sweep"] = {k: v for k, v in d["sweep"].items()
                  if all(not k.startswith(p) or kind == o for p, o in owner.items())}
    blob = json.dumps([kind, d, extra or {}], sort_keys=True, default=str)
    return f"{cfg.name}.{kind}.{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def schedule_config(cfg: ExperimentConfig, schedule: str) -> ExperimentConfig:
    """The experiment with the transformer trained under ``schedule``."""
    return replace(cfg, transformer_train=replace(cfg.transformer_train, schedule=schedule))


def ensure_models(cfg: ExperimentConfig, schedules: list[str], log: bool = True) -> dict[str, Path]:
    """Train what is missing (tokenizer, token cache, one transformer per schedule), reuse the rest."""
    from maskgit_lab.train import run_paths, train_tokenizer, train_transformer

    train_tokenizer(cfg, log=log)
    out = {}
    for s in schedules:
        c = schedule_config(cfg, s)
        train_transformer(c, log=log)
        out[s] = run_paths(c).transformer_file
    return out


class GridRunner:
    """Loads models, the evaluation reference and the held-out tokens once; scores cells."""

    def __init__(self, cfg: ExperimentConfig, mode: str, checkpoint: str | None, device: str,
                 n: int | None = None, log_training: bool = True) -> None:
        from maskgit_lab.evaluate import Evaluation, held_out_codes
        from maskgit_lab.sample import load_models

        self.cfg, self.mode, self.device = cfg, mode, device
        self.n = n or cfg.sweep.n
        if mode == "train" and checkpoint:
            raise ConfigError("--checkpoint names one model: it goes with --mode decode, not --mode train")
        if checkpoint:
            if not Path(checkpoint).is_file():
                raise ConfigError(f"checkpoint {checkpoint!r} not found")
            files = {"*": Path(checkpoint)}
        elif mode == "train":
            files = ensure_models(cfg, list(cfg.sweep.schedules), log_training)
        else:
            files = {"*": ensure_models(cfg, [cfg.transformer_train.schedule], log_training)[
                cfg.transformer_train.schedule]}
        self.models, self.identity = {}, {}
        for key, f in files.items():
            transformer, tok, tcfg, meta = load_models(f, device=device)
            self.models[key] = (transformer, tok, tcfg, meta)
            self.identity[key] = file_sha256(f)
        first = next(iter(self.models.values()))
        self.tokenizer, self.num_tokens = first[1], first[0].cfg.num_tokens
        self.evaluation = Evaluation(cfg, self.n, None, device, cfg.sweep.batch_size)
        codes, labels = held_out_codes(cfg, self.tokenizer, first[3]["tokenizer_sha"], limit=cfg.sweep.nll_sequences)
        k = min(cfg.sweep.nll_sequences, codes.shape[0])
        self.held_out = (codes[:k], labels[:k])
        self._nll: dict[tuple[str, str], dict] = {}
        self.git_commit = git_commit() or "unknown"

    def model(self, schedule: str):
        return self.models.get(schedule) or self.models["*"]

    def nll(self, schedule: str) -> dict:
        """NLL of the schedule's model under that schedule's training masking (cached)."""
        from maskgit_lab.eval.nll import masked_token_nll

        key = (schedule, "*" if "*" in self.models else schedule)
        if key not in self._nll:
            transformer = self.model(schedule)[0]
            self._nll[key] = masked_token_nll(transformer, *self.held_out, schedule,
                                              draws=self.cfg.evaluator.nll_draws, seed=self.cfg.sweep.seed)
        return self._nll[key]

    def score(self, decode_cfg, n: int | None = None, keep: int = 0) -> dict:
        """Sample n images with ``decode_cfg`` and score them; returns a flat record.

        ``keep``: also return the first ``keep`` images (for a sample grid).
        """
        from maskgit_lab.generate import check_guidance, iter_images

        transformer, tok, tcfg, meta = self.model(decode_cfg.schedule)
        check_guidance(tcfg.transformer_train.class_dropout, decode_cfg)
        n = n or self.n
        labels = torch.arange(n) % transformer.cfg.num_classes
        sampling = [0.0]
        kept: list[torch.Tensor] = []

        def timed():
            it = iter_images(transformer, tok, labels, decode_cfg, self.cfg.sweep.seed, self.cfg.sweep.batch_size)
            while True:
                t0 = time.perf_counter()
                try:
                    x = next(it)
                except StopIteration:
                    return
                sampling[0] += time.perf_counter() - t0
                if sum(len(k) for k in kept) < keep:
                    kept.append(x)
                yield x

        feats = self.evaluation.ext(timed())
        result = self.evaluation.score(feats, self.cfg.sweep.seed, labels)
        record = {short: result["metrics"].get(key) for short, key in LOGGED.items()}
        record.update(seconds_per_image=sampling[0] / n, n=n)
        images = torch.cat(kept)[:keep] if keep else None
        return {"record": record, "images": images, "result": result}

    def run_params(self, schedule: str) -> dict:
        """What identifies a cell's inputs, for MLflow params."""
        meta = self.model(schedule)[3]
        key = "*" if "*" in self.models else schedule
        return {"mode": self.mode, "n": self.n, "seed": self.cfg.sweep.seed,
                "extractor": self.evaluation.ext.name, "extractor_identity": self.evaluation.ext.identity,
                "reference": self.evaluation.reference_name, "checkpoint_sha": self.identity[key],
                "train_schedule": self.model(schedule)[2].transformer_train.schedule,
                "tokenizer_sha": meta.get("tokenizer_sha"), "git_commit": self.git_commit}


def class_rows(images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images made for labels arange(n) % C, reordered so each class fills one grid row."""
    k = images.shape[0] // num_classes
    x = images[: k * num_classes]
    return x.reshape(k, num_classes, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])


def add_sweep_arguments(parser) -> None:
    """Arguments every sweep shares."""
    parser.add_argument("--config", default="experiments/fmnist.yaml", help="experiment YAML")
    parser.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite:///<runs>/optuna.db)")
    parser.add_argument("--checkpoint", help="use this transformer file instead of the config's trained one")
    add_device_argument(parser)
    parser.add_argument("--out-dir", help="default: results/<experiment>")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. sweep.n=2000 'sweep.steps=[4,8]'")


class SweepLog:
    """MLflow side of a sweep: the parent run, and one nested run per cell or trial."""

    def __init__(self, cfg: ExperimentConfig, sid: str, kind: str, run_name: str, info: dict) -> None:
        import yaml

        from maskgit_lab import study as S
        from maskgit_lab.tracking import artifact_root, flatten

        self.S, self.cfg, self.sid = S, cfg, sid
        with S.sqlite_init_lock(cfg.tracking_uri):  # one process at a time creates the store and the parent
            self.client = S.mlflow_client(cfg.tracking_uri)
            self.exp = S.experiment_id(self.client, cfg.name, artifact_root(cfg) + f"/{cfg.name}")
            self.parent = S.parent_run(self.client, self.exp, sid, run_name, flatten(to_dict(cfg)),
                                       {"sweep_kind": kind, "sweep_info": json.dumps(info)})
        self.config_text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        if not self.client.list_artifacts(self.parent):
            self.client.log_text(self.parent, self.config_text, "config.yaml")

    def cell(self, cell: str, run_name: str, params: dict, work) -> dict:
        """Run ``work(run_id)`` (returns metrics) inside a nested run; FINISHED only on success."""
        run_id = self.S.child_run(self.client, self.exp, self.parent, self.sid, cell, run_name, params)
        try:
            metrics = work(run_id)
            self.S.log_metrics(self.client, run_id, metrics)
            self.client.log_text(run_id, self.config_text, "config.yaml")
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return metrics

    def grid_artifact(self, run_id: str, images: torch.Tensor, title: str, num_classes: int) -> None:
        import tempfile

        from maskgit_lab.figures import sample_grid_figure
        from maskgit_lab.sample import class_names

        names = class_names(self.cfg, num_classes)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "samples.png"
            sample_grid_figure(class_rows(images, len(names)), names, title, path)
            self.client.log_artifact(run_id, str(path))


def decode_params(dcfg) -> dict:
    return {f"decode.{k}": v for k, v in dcfg.__dict__.items()}


def main(argv: list[str] | None = None) -> int:
    """``python sweeps/schedule_ablation.py``: see the module docstring."""
    import argparse

    from maskgit_lab import study as S
    from maskgit_lab.config import load_config
    from maskgit_lab.errors import cli_errors
    from maskgit_lab.generate import check_guidance

    @cli_errors
    def run() -> int:
        parser = argparse.ArgumentParser(prog="python sweeps/schedule_ablation.py", description=__doc__.splitlines()[0])
        add_sweep_arguments(parser)
        parser.add_argument("--mode", choices=("decode", "train"), help="default: the config's sweep.mode")
        args = parser.parse_intermixed_args(argv)
        overrides = list(args.overrides) + ([f"sweep.mode={args.mode}"] if args.mode else [])
        cfg = load_config(args.config, overrides)
        sw = cfg.sweep
        check_guidance(cfg.transformer_train.class_dropout, cfg.sampling)
        storage = S.open_storage(args.storage, cfg.runs_dir)
        torch.set_float32_matmul_precision("high")
        wall = time.time()
        runner = GridRunner(cfg, sw.mode, args.checkpoint, args.device)
        sid = sweep_id(cfg, "schedule_ablation", {"models": runner.identity})  # tied to the exact model files
        info = {"experiment": cfg.name, "mode": sw.mode, "n": runner.n, "seed": sw.seed, "steps": list(sw.steps),
                "extractor": runner.evaluation.ext.name, "num_tokens": runner.num_tokens, "sweep_id": sid,
                "train_schedule": runner.model(sw.schedules[0])[2].transformer_train.schedule}
        mlog = SweepLog(cfg, sid, "schedule_ablation", f"schedule_ablation-{sw.mode}", info)
        space = {"schedule": list(sw.schedules), "steps": list(sw.steps)}
        st = S.grid_study(sid, storage, space)
        total = len(sw.schedules) * len(sw.steps)
        print(f"schedule ablation {sid}: {total} cells ({sw.mode} mode, N={runner.n}, {info['extractor']}); "
              f"Optuna study {sid!r} in {S.storage_url(args.storage, cfg.runs_dir)}")

        def run_cell(trial, params) -> float:
            s, t = params["schedule"], params["steps"]
            dcfg = replace(cfg.sampling, schedule=s, steps=t).validated(runner.num_tokens)
            classes = runner.model(s)[0].cfg.num_classes
            keep = sw.grid_per_class * classes

            def work(run_id: str) -> dict:
                out = runner.score(dcfg, keep=keep)
                rec = {**out["record"], "nll": runner.nll(s)["nll"]}
                mlog.grid_artifact(run_id, out["images"], f"{s}, T={t}", classes)
                return rec

            rec = mlog.cell(S.cell_key(params, list(space)), f"{s} T={t}",
                            {**params, **decode_params(dcfg), **runner.run_params(s)}, work)
            for k, v in rec.items():
                trial.set_user_attr(k, v)
            done = len(st.get_trials(deepcopy=False, states=(S.TrialState.COMPLETE,))) + 1
            print(f"[{done}/{total}] {s:12s} T={t:<3d} FID {rec['fid']:8.2f}  IS {rec['is']:.2f}  "
                  f"P {rec['precision']:.3f}  R {rec['recall']:.3f}  NLL {rec['nll']:.3f}  "
                  f"{rec['seconds_per_image'] * 1000:.1f} ms/img", flush=True)
            return rec["fid"]

        S.run_grid(st, space, run_cell)
        from maskgit_lab.tables import (
            ablation_cells,
            best_rows,
            markdown,
            sweep_runs,
            table3,
            write_ablation,
        )

        df = sweep_runs(cfg.tracking_uri, cfg.name, sid)
        out_dir = Path(args.out_dir or f"results/{cfg.name}")
        summary = write_ablation(df, out_dir, info)
        print(markdown(table3(best_rows(ablation_cells(df))), ""))
        print(f"best: {summary['best_schedule']} T={summary['best_steps']} FID {summary['best_fid']:.2f}; "
              f"wall time {time.time() - wall:.0f} s; results in {out_dir}/schedule_ablation.md")
        return 0

    return run()
