"""maskgit_lab: an experiment suite for MaskGIT (masked generative image transformers)."""

import os

# Nothing phones home, and figures render without a display: set before mlflow, dvc or
# matplotlib is imported anywhere in the process.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Large tensors reuse the process's freed memory instead of fresh, zeroed pages (allocator.py).
from maskgit_lab.allocator import keep_freed_memory  # noqa: E402

KEPT_FREED_MEMORY = keep_freed_memory()
