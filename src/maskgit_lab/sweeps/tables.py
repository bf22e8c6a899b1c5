"""Table formatting shared by the sweeps: Markdown and LaTeX from a pandas frame, and the
atomic writing of a table's CSV, Markdown and (optionally) LaTeX files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from maskgit_lab.io import atomic_write, atomic_write_text


def fmt(v, digits: int = 2) -> str:
    """One cell: '–' for missing, small floats with 4 decimals, others with ``digits``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 0.01 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def pm(mean: float, half: float, digits: int = 2) -> str:
    """'mean ± half-width' for a table cell ('–' for a missing mean, the mean alone without a
    half-width)."""
    if mean is None or not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" if half is None or not math.isfinite(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def markdown(table: pd.DataFrame, caption: str) -> str:
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    return f"{caption}\n\n{head}{body}"


def latex(table: pd.DataFrame, caption: str) -> str:
    cols = [c.replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$").replace("γ", r"$\gamma$")
            for c in table.columns]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
             r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule", " & ".join(cols) + r" \\",
             r"\midrule"]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(fmt(v).replace("–", "--") for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_table(table: pd.DataFrame, out_dir: Path, stem: str, caption: str, extra_md: str = "",
                tex: bool = False) -> str:
    """``stem``.csv and ``stem``.md (plus ``stem``.tex), atomically; returns the Markdown."""
    out_dir = Path(out_dir)
    text = markdown(table, caption) + extra_md
    atomic_write(out_dir / f"{stem}.csv", lambda p: table.to_csv(p, index=False))
    atomic_write_text(out_dir / f"{stem}.md", text)
    if tex:
        atomic_write_text(out_dir / f"{stem}.tex", latex(table, caption.replace("_", r"\_").replace("%", r"\%")))
    return text
