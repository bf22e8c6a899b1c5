"""What every command sets up in its own process, before any work: nothing phones home, and
large tensors reuse the process's freed memory (``allocator.py``)."""

from __future__ import annotations

import os

import mlflow.telemetry

from maskgit_lab.allocator import keep_freed_memory

OFFLINE = {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}


def configure() -> bool:
    """Set the offline switches (unless the user set them) and glibc's allocator; True when
    freed memory is kept."""
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)
    mlflow.telemetry.set_telemetry_client()  # re-read: MLflow decides at import time
    return keep_freed_memory()
