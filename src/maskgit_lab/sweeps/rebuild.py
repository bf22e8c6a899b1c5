"""Result tables and figures, rebuilt from the MLflow store alone (no sampling).

    python -m maskgit_lab.sweeps.rebuild [--config experiments/fmnist.yaml] [--sweep-id ID]

Every sweep logs one nested run per cell; this command reads the finished ones back and
writes each kind's tables with the same function the sweep itself uses. Without
``--sweep-id`` it rebuilds the newest sweep of each kind in the experiment.
"""

from __future__ import annotations

import json

from maskgit_lab.config import load_config
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import check_output_dir
from maskgit_lab.sweeps.choice_temperature import ChoiceTemperature
from maskgit_lab.sweeps.common import Sweep
from maskgit_lab.sweeps.comparison import Comparison
from maskgit_lab.sweeps.editing import Editing
from maskgit_lab.sweeps.schedule_ablation import ScheduleAblation
from maskgit_lab.tracking import sweep_parents, sweep_runs

# The sweep kinds whose tables come from their MLflow runs (the tuner's come from its study).
KINDS: dict[str, type[Sweep]] = {k.kind: k for k in (ScheduleAblation, Comparison, Editing, ChoiceTemperature)}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.sweeps.rebuild", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--sweep-id", help="rebuild this sweep (default: the newest of each kind)")
    parser.add_argument("--out-dir", help="default: results/<experiment>")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    parents = sweep_parents(cfg.tracking_uri, cfg.name)
    if parents.empty:
        raise ConfigError(f"no sweeps recorded in MLflow experiment {cfg.name!r} at {cfg.tracking_uri}")
    if args.sweep_id:
        parents = parents[parents["tags.sweep_id"] == args.sweep_id]
        if parents.empty:
            raise ConfigError(f"no sweep {args.sweep_id!r} in experiment {cfg.name!r}")
    out_dir = check_output_dir(args.out_dir or f"results/{cfg.name}", "--out-dir")
    done = set()
    for _, p in parents.iterrows():
        kind = p["tags.sweep_kind"]
        if kind in done or kind not in KINDS:
            continue
        info = json.loads(p["tags.sweep_info"])
        df = KINDS[kind].select(sweep_runs(cfg.tracking_uri, cfg.name, p["tags.sweep_id"]), info)
        KINDS[kind].write(df, out_dir, info)
        print(f"{kind}: {len(df)} cells from sweep {p['tags.sweep_id']} -> {out_dir}/{KINDS[kind].table_file}")
        done.add(kind)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
