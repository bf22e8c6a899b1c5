"""Result tables and figures, rebuilt without sampling: from the MLflow store, or from the
cells a table over trainings recorded in its results folder.

    python -m maskgit_lab.sweeps.rebuild [--config experiments/fmnist.yaml] [--sweep-id ID] [--out-dir ROOT]
    python -m maskgit_lab.sweeps.rebuild --cells results/fmnist/table3_trainings

Every sweep logs one nested run per cell; the first form reads the finished ones back and
writes each kind's tables with the same function the sweep itself uses, into
``ROOT/<the kind's folder>`` (ROOT: results/<experiment>). Without ``--sweep-id`` it rebuilds
the newest sweep of each kind in the experiment. The second form needs no MLflow store.
"""

from __future__ import annotations

import json
from pathlib import Path

from maskgit_lab.config import load_config
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import check_output_dir
from maskgit_lab.sweeps.choice_temperature import ChoiceTemperature
from maskgit_lab.sweeps.common import Sweep
from maskgit_lab.sweeps.comparison import Comparison
from maskgit_lab.sweeps.editing import Editing
from maskgit_lab.sweeps.order_ablation import OrderAblation
from maskgit_lab.sweeps.schedule_ablation import OverTrainings, ScheduleAblation
from maskgit_lab.sweeps.table3 import rebuild_from_cells
from maskgit_lab.tracking import sweep_experiment, sweep_parents, sweep_runs

# The sweep kinds whose tables come from their MLflow runs (the tuner's come from its study).
KINDS: dict[str, type[Sweep]] = {k.kind: k for k in (ScheduleAblation, OverTrainings, OrderAblation, Comparison,
                                                     Editing, ChoiceTemperature)}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.sweeps.rebuild", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--sweep-id", help="rebuild this sweep (default: the newest of each kind)")
    parser.add_argument("--out-dir", help="root of the kinds' folders (default: results/<experiment>)")
    parser.add_argument("--cells", help="rebuild the table over trainings recorded in this folder (no MLflow)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.cells:
        rebuild_from_cells(check_output_dir(args.cells, "--cells"))
        return 0
    cfg = load_config(args.config, args.overrides)
    parents = sweep_parents(cfg.tracking_uri, cfg.name)
    if parents.empty:
        raise ConfigError(f"no sweeps recorded in MLflow experiment {cfg.name!r} at {cfg.tracking_uri}")
    if args.sweep_id:
        parents = parents[parents["tags.sweep_id"] == args.sweep_id]
        if parents.empty:
            raise ConfigError(f"no sweep {args.sweep_id!r} in experiment {cfg.name!r}")
    root = Path(args.out_dir or f"results/{cfg.name}")
    done = set()
    for _, p in parents.iterrows():
        kind = p["tags.sweep_kind"]
        if kind in done or kind not in KINDS:
            continue
        info = json.loads(p["tags.sweep_info"])
        out_dir = check_output_dir(root / KINDS[kind].folder, "--out-dir")
        df = KINDS[kind].select(sweep_runs(cfg.tracking_uri, sweep_experiment(cfg.name, kind), p["tags.sweep_id"]), info)
        KINDS[kind].write(df, out_dir, info)
        print(f"{kind}: {len(df)} cells from sweep {p['tags.sweep_id']} -> {out_dir}/{KINDS[kind].table_file}")
        done.add(kind)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
