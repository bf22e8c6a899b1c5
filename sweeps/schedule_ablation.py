"""Regenerate the paper's Table 3 (mask schedule x decoding steps) on the configured dataset.

    python sweeps/schedule_ablation.py [--config experiments/fmnist.yaml] [--mode decode|train]
        [--storage sqlite:///runs/optuna.db | postgresql://...] [key=value ...]

Resumable: run it again after an interruption and it continues where it stopped; run it on
several machines with one --storage URL and they share the cells.
"""

from maskgit_lab.sweeps.schedule_ablation import main

if __name__ == "__main__":
    raise SystemExit(main())
