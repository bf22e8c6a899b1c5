"""The editing table (the paper's Table 2) on our data: FID of inpainting (the centre
50% x 50% regenerated) and outpainting (the right 50% regenerated) of the test images.

For the first N test images: their tokens (from the token cache), the region masked, the
sampler run from that partially known grid with the image's own class, the result decoded
and scored against the same N real test images. The tokenizer's reconstruction of the same
images (nothing regenerated) is the ceiling row. Resumable Optuna grid over the tasks, one
nested MLflow run per task; results/<experiment>/editing.{csv,md}.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from maskgit_lab.ablation import (
    LOGGED,
    SweepLog,
    add_sweep_arguments,
    decode_params,
    ensure_models,
    sweep_id,
)
from maskgit_lab.config import ExperimentConfig
from maskgit_lab.edit import box_region, center_box, edit_codes, side_region
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import file_sha256, git_commit

TASKS = ("inpaint-center", "outpaint-right", "reconstruction")
TASK_LABELS = {"inpaint-center": "inpainting (centre 50% × 50%)", "outpaint-right": "outpainting (right 50%)",
               "reconstruction": "tokenizer reconstruction (nothing regenerated)"}
# The paper's Table 2 (Places2 512 x 512, MaskGIT): FID.
PAPER_TABLE2 = {"inpaint-center": 7.92, "outpaint-right": 6.78}


def task_region(task: str, grid: int) -> torch.Tensor:
    """bool [grid * grid]: the tokens a task regenerates."""
    if task == "inpaint-center":
        return box_region(grid, center_box(0.5))
    if task == "outpaint-right":
        return side_region(grid, "right", 0.5)
    if task == "reconstruction":
        return torch.zeros(grid * grid, dtype=torch.bool)
    raise ConfigError(f"unknown editing task {task!r}; valid: {', '.join(TASKS)}")


class EditingRunner:
    def __init__(self, cfg: ExperimentConfig, device: str, checkpoint: str | None = None) -> None:
        from maskgit_lab.evaluate import Evaluation, held_out_codes
        from maskgit_lab.sample import load_models

        self.cfg, self.device, self.n = cfg, device, cfg.sweep.n
        if checkpoint is None:
            checkpoint = ensure_models(cfg, [cfg.transformer_train.schedule])[cfg.transformer_train.schedule]
        if not Path(checkpoint).is_file():
            raise ConfigError(f"checkpoint {str(checkpoint)!r} not found")
        self.transformer, self.tokenizer, self.mcfg, self.meta = load_models(checkpoint, device=device)
        self.identity = file_sha256(checkpoint)
        self.evaluation = Evaluation(cfg, self.n, None, device, cfg.sweep.batch_size)
        codes, labels = held_out_codes(cfg, self.tokenizer, self.meta["tokenizer_sha"])
        self.codes, self.labels = codes[: self.n], labels[: self.n]  # the reference's images, in order
        self.decode = cfg.sampling.validated(self.transformer.cfg.num_tokens)
        self.git_commit = git_commit() or "unknown"

    def images(self, task: str):
        """Edited (or reconstructed) test images, streamed in batches."""
        from maskgit_lab.generate import codes_to_images

        region = task_region(task, self.tokenizer.cfg.grid_size)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.sweep.seed)
        bs = self.cfg.sweep.batch_size
        for c, y in zip(self.codes.split(bs), self.labels.split(bs), strict=True):
            c, y = c.to(self.device), y.to(self.device)
            with torch.inference_mode():
                out = c if not region.any() else edit_codes(self.transformer, c, region, y, self.decode, gen).tokens
                images = codes_to_images(self.tokenizer, out).cpu()
            yield images

    def run_task(self, task: str, keep: int) -> tuple[dict, torch.Tensor]:
        kept: list[torch.Tensor] = []
        t0 = time.perf_counter()
        feats = self.evaluation.ext((kept.append(x) or x for x in self.images(task)), total=self.n, desc=task)
        seconds = time.perf_counter() - t0
        result = self.evaluation.score(feats, self.cfg.sweep.seed, self.labels)
        record = {short: result["metrics"].get(key) for short, key in LOGGED.items()}
        region = task_region(task, self.tokenizer.cfg.grid_size)
        record.update(regenerated_fraction=float(region.float().mean()), seconds=seconds, n=self.n)
        return record, torch.cat(kept)[:keep]

    def run_params(self, task: str) -> dict:
        return {"task": task, "label": TASK_LABELS[task], "n": self.n, "seed": self.cfg.sweep.seed,
                "extractor": self.evaluation.ext.name, "extractor_identity": self.evaluation.ext.identity,
                "reference": self.evaluation.reference_name, "checkpoint_sha": self.identity,
                "tokenizer_sha": self.meta["tokenizer_sha"], "git_commit": self.git_commit,
                **decode_params(self.decode)}


def main(argv: list[str] | None = None) -> int:
    """``python sweeps/editing.py``: see the module docstring."""
    import argparse

    from maskgit_lab import study as S
    from maskgit_lab.config import load_config
    from maskgit_lab.errors import cli_errors

    @cli_errors
    def run() -> int:
        parser = argparse.ArgumentParser(prog="python sweeps/editing.py", description=__doc__.splitlines()[0])
        add_sweep_arguments(parser)
        args = parser.parse_intermixed_args(argv)
        cfg = load_config(args.config, args.overrides)
        out_dir = Path(args.out_dir or f"results/{cfg.name}")
        storage = S.open_storage(args.storage, cfg.runs_dir)
        torch.set_float32_matmul_precision("high")
        wall = time.time()
        runner = EditingRunner(cfg, args.device, args.checkpoint)
        sid = sweep_id(cfg, "editing", {"model": runner.identity})
        info = {"experiment": cfg.name, "n": runner.n, "seed": cfg.sweep.seed, "sweep_id": sid,
                "extractor": runner.evaluation.ext.name, "schedule": runner.decode.schedule,
                "steps": runner.decode.steps}
        mlog = SweepLog(cfg, sid, "editing", "editing", info)
        space = {"task": list(TASKS)}
        st = S.grid_study(sid, storage, space)
        print(f"editing {sid}: {len(TASKS)} tasks on the first {runner.n} test images, {runner.decode.schedule} "
              f"T={runner.decode.steps}, {info['extractor']}")
        classes = runner.transformer.cfg.num_classes

        def run_cell(trial, params) -> float:
            task = params["task"]

            def work(run_id: str) -> dict:
                rec, images = runner.run_task(task, cfg.sweep.grid_per_class * classes)
                mlog.grid_artifact(run_id, images, TASK_LABELS[task], classes)
                return rec

            rec = mlog.cell(S.cell_key(params, list(space)), TASK_LABELS[task], runner.run_params(task), work)
            for k, v in rec.items():
                trial.set_user_attr(k, v)
            print(f"{TASK_LABELS[task]:48s} FID {rec['fid']:8.2f}  IS {rec['is']:.2f}  P {rec['precision']:.3f}  "
                  f"R {rec['recall']:.3f}", flush=True)
            return rec["fid"]

        S.run_grid(st, space, run_cell)
        from maskgit_lab.tables import markdown, sweep_runs, write_editing

        table = write_editing(sweep_runs(cfg.tracking_uri, cfg.name, sid), out_dir, info)
        print(markdown(table, ""))
        print(f"wall time {time.time() - wall:.0f} s; results in {out_dir}/editing.md")
        return 0

    return run()
