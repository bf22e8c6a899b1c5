"""Tune T, Gumbel temperature, guidance weight/ramp and softmax temperature for one schedule
with Optuna TPE (FID, or FID and time per image), pruning weak trials at a small N first.

    python sweeps/tune_sampler.py [--config experiments/fmnist.yaml] [--schedule cosine]
        [--trials 24] [--objectives fid|fid,time] [--storage URL] [key=value ...]
"""

from maskgit_lab.sweeps.tune_sampler import main

if __name__ == "__main__":
    raise SystemExit(main())
