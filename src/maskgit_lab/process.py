"""What every command sets up in its own process, before any work: nothing phones home, log
records hide URL passwords, and large tensors reuse the process's freed memory (``allocator.py``)."""

from __future__ import annotations

import logging
import os
import traceback

import mlflow.telemetry

from maskgit_lab.allocator import keep_freed_memory
from maskgit_lab.redact import redact_text

OFFLINE = {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}


def redact_log_records() -> None:
    """Every log record (Optuna's, MLflow's, Lightning's, the suite's) is created with URL
    passwords hidden: one record factory, installed once."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def make(*args, **kwargs):
        record = factory(*args, **kwargs)
        if record.args or "://" in str(record.msg):
            record.msg, record.args = redact_text(record.getMessage()), ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return record

    make.redacts = True
    logging.setLogRecordFactory(make)


def configure() -> bool:
    """Set the offline switches (unless the user set them) and glibc's allocator; True when
    freed memory is kept."""
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)
    redact_log_records()
    mlflow.telemetry.set_telemetry_client()  # re-read: MLflow decides at import time
    return keep_freed_memory()
