"""Choose the Gumbel (choice) temperature by measurement: FID and class consistency for a grid
of tau on every seed, and the spread of the model's log p against the noise's at each step.

    python sweeps/choice_temperature.py [--config experiments/fmnist.yaml] [--taus 0,0.25,0.5,1,2,4.5]
        [--storage URL] [key=value ...]

Resumable like the ablation; results/<experiment>/choice_temperature/choice_temperature.{csv,md,png} and
logp_vs_gumbel.png.
"""

from maskgit_lab.sweeps.choice_temperature import main

if __name__ == "__main__":
    raise SystemExit(main())
