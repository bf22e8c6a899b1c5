"""Regenerate the paper's Table 1 on the configured dataset: MaskGIT against the
autoregressive baseline on the same tokens (quality, CAS, forward passes and speed).

    python sweeps/comparison.py [--config experiments/fmnist.yaml] [--best SCHEDULE:T]
        [--storage sqlite:///runs/optuna.db | postgresql://...] [key=value ...]

MaskGIT's best schedule and T come from the schedule ablation's summary.json unless
--best is given; the AR baseline is trained first if missing. Resumable like the ablation.
"""

from maskgit_lab.sweeps.comparison import main

if __name__ == "__main__":
    raise SystemExit(main())
