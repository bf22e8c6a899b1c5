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
from pathlib import Path

import torch

from maskgit_lab.ablation import GridRunner, SweepLog, add_sweep_arguments, decode_params, sweep_id
from maskgit_lab.config import load_config
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.schedules import canonical_name

OBJECTIVES = ("fid", "fid,time")


def suggest(trial, base, max_steps: int, guidance: bool):
    """A DecodeConfig drawn from the search space."""
    return replace(
        base,
        steps=trial.suggest_int("steps", 2, max_steps),
        choice_temperature=trial.suggest_float("choice_temperature", 0.5, 12.0, log=True),
        softmax_temperature=trial.suggest_float("softmax_temperature", 0.6, 1.4),
        guidance_weight=trial.suggest_float("guidance_weight", 0.0, 3.0) if guidance else 0.0,
        guidance_ramp=trial.suggest_categorical("guidance_ramp", ["constant", "linear"]) if guidance else "constant",
    )


@cli_errors
def main(argv: list[str] | None = None) -> int:
    import optuna

    from maskgit_lab import study as S
    from maskgit_lab.io import atomic_write_text

    parser = argparse.ArgumentParser(prog="python sweeps/tune_sampler.py", description=__doc__.splitlines()[0])
    add_sweep_arguments(parser)
    parser.add_argument("--schedule", help="mask schedule to tune (default: the config's sweep.tune_schedule)")
    parser.add_argument("--trials", type=int, help="total trials in the study (default: sweep.tune_trials)")
    parser.add_argument("--objectives", choices=OBJECTIVES, default="fid")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    sw = cfg.sweep
    schedule = canonical_name(args.schedule or sw.tune_schedule)
    trials = args.trials if args.trials is not None else sw.tune_trials
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    storage = S.open_storage(args.storage, cfg.runs_dir)
    torch.set_float32_matmul_precision("high")
    runner = GridRunner(cfg, "decode", args.checkpoint, args.device)
    guidance = runner.model(schedule)[2].transformer_train.class_dropout > 0
    extra = {"schedule": schedule, "objectives": args.objectives, "models": runner.identity}
    sid = sweep_id(cfg, "tune_sampler", extra)
    info = {"experiment": cfg.name, "schedule": schedule, "n": runner.n, "n_small": sw.tune_n_small,
            "objectives": args.objectives, "extractor": runner.evaluation.ext.name, "sweep_id": sid}
    mlog = SweepLog(cfg, sid, "tune_sampler", f"tune_sampler-{schedule}", info)
    multi = args.objectives == "fid,time"
    with S.sqlite_init_lock(storage.url):
        st = optuna.create_study(
            study_name=sid, storage=storage, load_if_exists=True,
            directions=["minimize", "minimize"] if multi else ["minimize"],
            sampler=optuna.samplers.TPESampler(seed=sw.seed, multivariate=True, n_startup_trials=min(8, trials)),
            pruner=optuna.pruners.NopPruner() if multi else optuna.pruners.MedianPruner(n_startup_trials=4),
        )
    print(f"tune_sampler {sid}: {schedule}, {trials} trials, objective {args.objectives}, N={sw.tune_n_small} "
          f"then {runner.n}{'' if guidance else ' (guidance off: model trained without class dropout)'}")

    def objective(trial) -> float | tuple[float, float]:
        S.mark_worker(trial)
        dcfg = suggest(trial, replace(cfg.sampling, schedule=schedule), sw.tune_max_steps, guidance)
        dcfg = dcfg.validated(runner.num_tokens)
        params = {"schedule": schedule, **decode_params(dcfg), **runner.run_params(schedule)}

        def work(run_id: str) -> dict:
            small = runner.score(dcfg, n=sw.tune_n_small)["record"]
            metrics = {f"{k}_small": v for k, v in small.items() if k != "n"}
            if not multi:
                trial.report(small["fid"], step=0)
                if trial.should_prune():
                    trial.set_user_attr("fid_small", small["fid"])
                    metrics["pruned"] = 1.0
                    return metrics
            full = runner.score(dcfg, keep=sw.grid_per_class * runner.model(schedule)[0].cfg.num_classes)
            mlog.grid_artifact(run_id, full["images"], f"trial {trial.number}", runner.model(schedule)[0].cfg.num_classes)
            metrics.update({k: v for k, v in full["record"].items() if k != "n"})
            return metrics

        metrics = mlog.cell(f"trial={trial.number}", f"trial {trial.number}", params, work)
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        if metrics.get("pruned"):
            print(f"trial {trial.number:3d}: pruned at N={sw.tune_n_small} (FID {metrics['fid_small']:.2f}) {trial.params}")
            raise optuna.TrialPruned()
        print(f"trial {trial.number:3d}: FID {metrics['fid']:.2f}, {metrics['seconds_per_image'] * 1000:.1f} ms/img "
              f"{ {k: round(v, 3) if isinstance(v, float) else v for k, v in trial.params.items()} }", flush=True)
        return (metrics["fid"], metrics["seconds_per_image"]) if multi else metrics["fid"]

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    while True:
        S.reap_dead_trials(st)
        done = len(st.get_trials(deepcopy=False, states=counted))
        running = len(st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        if done + running >= trials:
            break
        st.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
    while st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        time.sleep(5)  # other workers still finishing their trials
        S.reap_dead_trials(st)

    out_dir = Path(args.out_dir or f"results/{cfg.name}")
    df = st.trials_dataframe(attrs=("number", "state", "params", "user_attrs", "values" if multi else "value"))
    df = df[[c for c in df.columns if not c.startswith("user_attrs_worker")]]
    from maskgit_lab.io import atomic_write

    atomic_write(out_dir / f"tune_sampler_{schedule}.csv", lambda p: df.to_csv(p, index=False))
    best = st.best_trials if multi else [st.best_trial]
    lines = [f"# Sampler tuning: {schedule} on {cfg.name} (N={runner.n}, {runner.evaluation.ext.name}, "
             f"objective {args.objectives}, {len(df)} trials)", ""]
    for b in best:
        lines.append(f"- trial {b.number}: FID {b.user_attrs['fid']:.2f}, "
                     f"{b.user_attrs['seconds_per_image'] * 1000:.1f} ms/img, params {b.params}")
    atomic_write_text(out_dir / f"tune_sampler_{schedule}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
