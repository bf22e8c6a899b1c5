"""Figures: class-by-sample grids and the step-by-step decoding process (paper Figure 2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid

from maskgit_lab.io import atomic_write

Tensor = torch.Tensor


def _to_numpy_grid(images: Tensor, nrow: int, pad: int = 2):
    """[M, C, H, W] in [-1, 1] -> HxWx3 float array in [0, 1] with ``nrow`` images per row."""
    grid = make_grid(((images.clamp(-1, 1) + 1) / 2).float(), nrow=nrow, padding=pad, pad_value=1.0)
    return grid.permute(1, 2, 0).cpu().numpy()


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    out = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return out


def sample_grid_figure(images: Tensor, row_labels: Sequence[str], title: str, path: str | Path) -> Path:
    """Save a grid with one labelled row per class. ``images``: [R*k, C, H, W], row-major."""
    rows = len(row_labels)
    per_row = images.shape[0] // rows
    grid = _to_numpy_grid(images, per_row)
    h = images.shape[-2] + 2
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * per_row, 0.55 * rows + 0.6))
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([2 + h * i + h / 2 - 1 for i in range(rows)], list(row_labels), fontsize=8)
    ax.set_xticks([])
    ax.set_title(title, fontsize=8)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return save_figure(fig, path)


def masked_overlay(images: Tensor, masked: Tensor, grid_size: int) -> Tensor:
    """Grey out the pixels of still-masked tokens. images [B, C, H, W], masked [B, N] bool."""
    b, _, h, w = images.shape
    m = masked.reshape(b, 1, grid_size, grid_size).float()
    m = torch.nn.functional.interpolate(m, size=(h, w), mode="nearest").bool()
    return images.masked_fill(m, 0.0)  # 0.0 is mid-grey in [-1, 1]


def decoding_process_figure(
    panels: list[tuple[str, Tensor, Tensor]], grid_size: int, title: str, path: str | Path
) -> Path:
    """Save the decoding process of one or more runs side by side.

    ``panels``: (label, kept [T, C, H, W], predicted [T, C, H, W]) per run: ``kept`` shows
    the tokens fixed after each step (masked tokens greyed), ``predicted`` the full
    prediction at that step.
    """
    steps = panels[0][1].shape[0]
    fig, axes = plt.subplots(2 * len(panels), 1, figsize=(1.0 + 0.7 * steps, 1.5 * len(panels) * 1.1 + 0.4))
    axes = axes if isinstance(axes, Sequence) or hasattr(axes, "__len__") else [axes]
    for i, (label, kept, pred) in enumerate(panels):
        for j, (name, imgs) in enumerate((("kept", kept), ("predicted", pred))):
            ax = axes[2 * i + j]
            ax.imshow(_to_numpy_grid(imgs, steps), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(f"{label}\n{name}", fontsize=7)
    axes[-1].set_xlabel("step 1 ... T", fontsize=7)
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def edit_figure(panels: list[tuple[str, Tensor]], title: str, path: str | Path) -> Path:
    """Input, region and result side by side; each panel [C, H, W] in [-1, 1]."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (name, img) in zip(axes, panels, strict=True):
        ax.imshow(_to_numpy_grid(img[None], 1, pad=0), interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)
