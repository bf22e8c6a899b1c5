"""The editing table (the paper's Table 2) on our data: FID of inpainting (the centre
50% x 50% regenerated) and outpainting (the right 50% regenerated) of the test images.

For the first N test images: their tokens (from the token cache), the region masked, the
sampler run from that partially known grid with the image's own class, the result decoded
and scored against the same N real test images. The tokenizer's reconstruction of the same
images (nothing regenerated) is the ceiling row. Resumable Optuna grid over the tasks, one
nested MLflow run per task; results/<experiment>/table2/editing.{csv,md,json}.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from maskgit_lab.decoding.generate import codes_to_images
from maskgit_lab.decoding.regions import box_region, center_box, edit_codes, side_region
from maskgit_lab.errors import ConfigError
from maskgit_lab.eval.evaluation import held_out_codes
from maskgit_lab.io import atomic_write_text
from maskgit_lab.stats import interval
from maskgit_lab.sweeps.common import Sweep, decode_params, sweep_main
from maskgit_lab.sweeps.paper import PAPER_TABLE2
from maskgit_lab.sweeps.tables import pm, write_table

TASKS = ("inpaint-center", "outpaint-right", "reconstruction")
TASK_LABELS = {"inpaint-center": "inpainting (centre 50% × 50%)", "outpaint-right": "outpainting (right 50%)",
               "reconstruction": "tokenizer reconstruction (nothing regenerated)"}


def task_region(task: str, grid: int) -> torch.Tensor:
    """bool [grid * grid]: the tokens a task regenerates."""
    if task == "inpaint-center":
        return box_region(grid, center_box(0.5))
    if task == "outpaint-right":
        return side_region(grid, "right", 0.5)
    if task == "reconstruction":
        return torch.zeros(grid * grid, dtype=torch.bool)
    raise ConfigError(f"unknown editing task {task!r}; valid: {', '.join(TASKS)}")


class Editing(Sweep):
    kind = "editing"
    title = ("Regenerate the paper's Table 2 on the configured dataset: FID of inpainting (centre 50% x 50%) "
             "and outpainting (right 50%) of the test images with the MaskGIT sampler.")
    table_file = "editing.md"
    folder = "table2"

    def setup(self, storage) -> None:
        super().setup(storage)
        m = self.model()
        codes, labels = held_out_codes(self.cfg, m.tokenizer, m.meta["tokenizer_sha"])
        self.codes, self.labels = codes[: self.n], labels[: self.n]  # the reference's images, in order

    @property
    def decode(self):
        return self.cfg.sampling.validated(self.model().transformer.cfg.num_tokens)

    def identity(self) -> dict:
        return {"model": self.model().sha}

    def describe(self) -> dict:
        return {"schedule": self.decode.schedule, "steps": self.decode.steps}

    def banner(self) -> str:
        return (f"editing {self.sid}: {len(TASKS)} tasks on the first {self.n} test images, {self.decode.schedule} "
                f"T={self.decode.steps}, {self.evaluation.ext.name}")

    def space(self) -> dict[str, list]:
        return {"task": list(TASKS), "seed": list(self.cfg.sweep.seeds)}

    def cell_name(self, params: dict) -> str:
        return f"{TASK_LABELS[params['task']]} seed={params['seed']}"

    def cell_params(self, params: dict) -> dict:
        return {"task": params["task"], "label": TASK_LABELS[params["task"]], **self.provenance(seed=params["seed"]),
                **decode_params(self.decode)}

    def images(self, task: str, seed: int) -> Iterator[torch.Tensor]:
        """Edited (or reconstructed) test images, streamed in batches; ``seed`` drives the sampler."""
        m = self.model()
        region = task_region(task, m.tokenizer.cfg.grid_size)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        bs = self.cfg.sweep.batch_size
        for c, y in zip(self.codes.split(bs), self.labels.split(bs), strict=True):
            c, y = c.to(self.device), y.to(self.device)
            with torch.inference_mode():
                out = c if not region.any() else edit_codes(m.sampler, c, region, y, self.decode, gen).tokens
                images = codes_to_images(m.decoder, out).float().cpu()
            yield images

    def run_cell(self, params: dict, run_id: str) -> dict:
        task = params["task"]
        out = self.score(self.images(task, params["seed"]), self.labels, keep=self.grid_keep(), desc=task,
                         seed=params["seed"])
        region = task_region(task, self.model().tokenizer.cfg.grid_size)
        self.log_grid(run_id, out["images"], TASK_LABELS[task])
        return {**out["record"], "regenerated_fraction": float(region.float().mean())}

    def cell_line(self, params: dict, rec: dict) -> str:
        return (f"{TASK_LABELS[params['task']]:48s} seed {params['seed']}  FID {rec['fid']:8.2f}  IS {rec['is']:.2f}  "
                f"P {rec['precision']:.3f}  R {rec['recall']:.3f}")

    @staticmethod
    def write(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
        return write_editing(df, out_dir, info)


def write_editing(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
    """editing.{csv,md}: Table 2's shape (FID of inpainting and outpainting), mean ± 95%
    interval over the seeds (the sampler's; the images are the same N test images)."""
    rows, record = [], {}
    for t in TASKS:
        g = df[df["task"] == t]
        if not len(g):
            continue
        cell = {m: interval(g[m].astype(float).tolist())[:2] for m in
                ("fid", "is", "precision", "recall", "class_consistency")}
        record[t] = {m: {"mean": v[0], "ci": v[1]} for m, v in cell.items()}
        rows.append({"Task": TASK_LABELS[t], "regenerated": f"{100 * float(g['regenerated_fraction'].iloc[0]):.0f}%",
                     "FID↓": pm(*cell["fid"]), "IS↑": pm(*cell["is"]), "Prec↑": pm(*cell["precision"], 3),
                     "Rec↑": pm(*cell["recall"], 3), "class consistency": pm(*cell["class_consistency"], 3),
                     "paper FID": PAPER_TABLE2.get(t)})
    table = pd.DataFrame(rows, dtype=object)
    caption = (f"Editing (Table 2 shape) on {info['experiment']}: the first {info['n']} test images with the region "
               f"regenerated by MaskGIT ({info['schedule']}, T={info['steps']}, the image's own class), scored "
               f"against the same {info['n']} real images with {info['extractor']}; mean ± 95% t-interval "
               f"half-width over the sampler seeds {info.get('seeds')} (the reconstruction row has no randomness). "
               "'paper FID' is the paper's Places2 512 result, for reference only.")
    atomic_write_text(Path(out_dir) / "editing.json",
                      json.dumps({**info, "tasks": record}, indent=2, default=float) + "\n")
    return write_table(table, out_dir, "editing", caption)


main = sweep_main(Editing)
