"""Which positions are revealed: order (confidence, random, Halton) x mask schedule x T.

    python sweeps/order_ablation.py [--config experiments/fmnist.yaml] ['sweep.seeds=[0,1,2]']
        ['sweep.orders=[confidence,halton]'] ['sweep.schedules=[cosine]'] ['sweep.steps=[8,32]']

Each schedule's own trained model (trained first when missing), the same counts per step under
every order; resumable and shareable like the schedule ablation. Results in
results/<experiment>/order_ablation/ and MLflow.
"""

from maskgit_lab.sweeps.order_ablation import main

if __name__ == "__main__":
    raise SystemExit(main())
