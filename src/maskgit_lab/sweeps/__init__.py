"""The sweeps: three kinds (schedule ablation, comparison, editing) and the sampler tuner,
each a ``Sweep`` run by the one runner in ``common``. Optuna lives in ``optuna_study``,
the paper's numbers in ``paper``, table formatting in ``tables``, and ``rebuild`` rewrites
the tables from the MLflow runs alone.
"""
