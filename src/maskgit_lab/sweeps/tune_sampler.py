"""Tune the sampler of one trained model: T, Gumbel (choice) temperature, guidance weight and
ramp, softmax temperature, for a chosen schedule, with Optuna's TPE.

    python sweeps/tune_sampler.py [--config ...] [--schedule cosine] [--trials 24]
        [--objectives fid | fid,time] [--storage URL] [key=value ...]

Objective: FID (or FID and seconds per image, two objectives, TPE's multi-objective mode).
Pruning: every trial is first scored on ``sweep.tune_n_small`` samples; a trial worse than
the median of earlier trials at that stage stops there, the others go on to ``sweep.n``.
Resumable and shareable like the ablation: the study lives in the storage, a re-run adds
trials until the total reaches ``--trials``, and several workers can share one study.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from maskgit_lab.decoding.sampler import DecodeConfig
from maskgit_lab.decoding.schedules import canonical_name
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import atomic_write, atomic_write_text
from maskgit_lab.stats import interval
from maskgit_lab.sweeps import optuna_study as S
from maskgit_lab.sweeps.common import TIMING_NOTE, Sweep, decode_params, sweep_main
from maskgit_lab.sweeps.tables import pm

OBJECTIVES = ("fid", "fid,time")
HELD_OUT = 1000  # held-out seeds: 1000 + each of sweep.seeds, never the tuning seed


def suggest(trial: optuna.Trial, base: DecodeConfig, max_steps: int, guidance: bool) -> DecodeConfig:
    """A DecodeConfig drawn from the search space: T, the order of the positions, the choice
    temperature (confidence order only), the token temperature (constant, or a linear ramp
    between two values) and, for a model with a null class, the guidance weight and ramp."""
    order = trial.suggest_categorical("order", ["confidence", "random", "halton"])
    schedule = trial.suggest_categorical("temperature_schedule", ["constant", "linear"])
    temperatures = ({"softmax_temperature": trial.suggest_float("softmax_temperature", 0.6, 1.4)}
                    if schedule == "constant" else
                    {"temperature_min": trial.suggest_float("temperature_min", 0.6, 1.4),
                     "temperature_max": trial.suggest_float("temperature_max", 0.6, 1.4)})
    return replace(
        base, **temperatures,
        steps=trial.suggest_int("steps", 2, max_steps),
        order=order,
        temperature_schedule=schedule,
        choice_temperature=(trial.suggest_float("choice_temperature", 0.5, 12.0, log=True)
                            if order == "confidence" else base.choice_temperature),
        guidance_weight=trial.suggest_float("guidance_weight", 0.0, 3.0) if guidance else 0.0,
        guidance_ramp=(trial.suggest_categorical("guidance_ramp", ["constant", "linear", "cosine"])
                       if guidance else "constant"),
    )


class TuneSampler(Sweep):
    kind = "tune_sampler"
    title = ("Tune T, Gumbel temperature, guidance weight/ramp and softmax temperature for one schedule with "
             "Optuna TPE (FID, or FID and time per image), pruning weak trials at a small N first.")
    folder = "tuner"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--schedule", help="mask schedule to tune (default: the config's sweep.tune_schedule)")
        parser.add_argument("--trials", type=int, help="total trials in the study (default: sweep.tune_trials)")
        parser.add_argument("--objectives", choices=OBJECTIVES, default="fid")

    def check(self) -> None:
        sw = self.cfg.sweep
        self.schedule = canonical_name(self.args.schedule or sw.tune_schedule)
        self.trials = self.args.trials if self.args.trials is not None else sw.tune_trials
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        self.multi = self.args.objectives == "fid,time"

    @property
    def table_file(self) -> str:  # type: ignore[override]
        return f"tune_sampler_{self.schedule}.md"

    @property
    def guidance(self) -> bool:
        return self.model().cfg.transformer_train.class_dropout > 0

    def identity(self) -> dict:
        return {"schedule": self.schedule, "objectives": self.args.objectives, **super().identity()}

    def view_params(self) -> list[str]:
        return ["decode.steps", "decode.order", "decode.choice_temperature", "decode.softmax_temperature",
                "decode.guidance_weight"]

    def compared_params(self) -> list[str]:
        return self.view_params()

    def describe(self) -> dict:
        return {"schedule": self.schedule, "n_small": self.cfg.sweep.tune_n_small,
                "objectives": self.args.objectives}

    def run_name(self) -> str:
        return f"tune_sampler-{self.schedule}"

    def banner(self) -> str:
        return (f"tune_sampler {self.sid}: {self.schedule}, {self.trials} trials, objective {self.args.objectives}, "
                f"N={self.cfg.sweep.tune_n_small} then {self.n}"
                f"{'' if self.guidance else ' (guidance off: model trained without class dropout)'}")

    def trial_config(self, trial) -> DecodeConfig:
        """The decode settings of a finished trial."""
        fields = set(DecodeConfig.__dataclass_fields__)
        chosen = {k: v for k, v in trial.params.items() if k in fields}
        fixed = {"schedule": self.schedule, "guidance_weight": 0.0, "guidance_ramp": "constant"}
        return replace(self.cfg.sampling, **{**fixed, **chosen}).validated(self.model().transformer.cfg.num_tokens)

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        sw = self.cfg.sweep
        dcfg = suggest(trial, replace(self.cfg.sampling, schedule=self.schedule), sw.tune_max_steps, self.guidance)
        dcfg = dcfg.validated(self.model().transformer.cfg.num_tokens)
        params = {"schedule": self.schedule, **decode_params(dcfg), "mode": "decode",
                  "train_schedule": self.model().cfg.transformer_train.schedule, **self.provenance()}

        def work(run_id: str) -> dict:
            small = self.sample_and_score(dcfg, n=sw.tune_n_small)["record"]
            metrics = {f"{k}_small": v for k, v in small.items() if k != "n"}
            if not self.multi:
                trial.report(small["fid"], step=0)
                if trial.should_prune():
                    trial.set_user_attr("fid_small", small["fid"])
                    metrics["pruned"] = 1.0
                    return metrics
            full = self.sample_and_score(dcfg, keep=self.grid_keep())
            self.log_grid(run_id, full["images"], f"trial {trial.number}")
            metrics.update({k: v for k, v in full["record"].items() if k != "n"})
            return metrics

        metrics = self.mlog.cell(f"trial={trial.number}", f"trial {trial.number}", params, work)
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        if metrics.get("pruned"):
            print(f"trial {trial.number:3d}: pruned at N={sw.tune_n_small} (FID {metrics['fid_small']:.2f}) "
                  f"{trial.params}")
            raise optuna.TrialPruned()
        print(f"trial {trial.number:3d}: FID {metrics['fid']:.2f}, {metrics['seconds_per_image'] * 1000:.1f} ms/img "
              f"{ {k: round(v, 3) if isinstance(v, float) else v for k, v in trial.params.items()} }", flush=True)
        return (metrics["fid"], metrics["seconds_per_image"]) if self.multi else metrics["fid"]

    def search(self) -> None:
        """TPE trials until the study holds ``--trials`` finished ones (shared, resumable)."""
        sw = self.cfg.sweep
        self.study = S.open_study(
            self.sid, self.storage, directions=["minimize", "minimize"] if self.multi else ["minimize"],
            sampler=optuna.samplers.TPESampler(seed=sw.seed, multivariate=True, n_startup_trials=min(8, self.trials)),
            pruner=optuna.pruners.NopPruner() if self.multi else optuna.pruners.MedianPruner(n_startup_trials=4),
        )
        st = self.study
        counted = (TrialState.COMPLETE, TrialState.PRUNED)
        while True:
            S.reap_dead_trials(st)
            done = len(st.get_trials(deepcopy=False, states=counted))
            running = len(st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if done >= self.trials and not running:
                break
            if done + running >= self.trials:
                # other workers are finishing the last trials; one that dies is failed by the
                # reaping above, and its place is taken here
                time.sleep(5)
                continue
            try:
                st.optimize(self.objective, n_trials=1, catch=(), gc_after_trial=False)
            except KeyboardInterrupt:
                S.fail_own_running(st)
                raise

    def headline(self) -> tuple[dict[str, float], dict[str, str]]:
        if self.multi:
            return {}, {"best_cells": ",".join(f"trial={t.number}" for t in self.study.best_trials)}
        best = self.study.best_trial
        return {"best_fid": float(best.value)}, {"best_cell": f"trial={best.number}"}

    def finish(self) -> str:
        """tune_sampler_<schedule>.{csv,md} from the study's trials."""
        st = self.study
        df = st.trials_dataframe(attrs=("number", "state", "params", "user_attrs", "values" if self.multi else "value"))
        df = df[[c for c in df.columns if not c.startswith("user_attrs_worker")]]
        atomic_write(self.out_dir / f"tune_sampler_{self.schedule}.csv", lambda p: df.to_csv(p, index=False))
        best = st.best_trials if self.multi else [st.best_trial]
        held_out = [HELD_OUT + s for s in self.cfg.sweep.seeds]
        lines = [f"# Sampler tuning: {self.schedule} on {self.cfg.name} (N={self.n}, {self.evaluation.ext.name}, "
                 f"objective {self.args.objectives}, {len(df)} trials; {TIMING_NOTE.replace('s/img', 'ms/img')})",
                 "", f"Trials are scored on seed {self.cfg.sweep.seed}; the best is re-measured on held-out seeds "
                 f"{held_out} (mean ± 95% t-interval half-width): its tuning-seed FID is a minimum over noisy "
                 "trials and biased low.", ""]
        for b in best:
            fids = [self.sample_and_score(self.trial_config(b), seed=s)["record"]["fid"] for s in held_out]
            mean, half, _, _ = interval(fids)
            lines.append(f"- trial {b.number}: FID {b.user_attrs['fid']:.2f} on the tuning seed, "
                         f"{pm(mean, half)} on held-out seeds; {b.user_attrs['seconds_per_image'] * 1000:.1f} "
                         f"ms/img; params {b.params}")
        text = "\n".join(lines) + "\n"
        atomic_write_text(self.out_dir / f"tune_sampler_{self.schedule}.md", text)
        return text


main = sweep_main(TuneSampler)
