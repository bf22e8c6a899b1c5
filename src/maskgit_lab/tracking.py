"""Everything MLflow: the store (a local SQLite file by default), Lightning's logger for the
training stages, and the sweeps' runs (one parent per sweep, one nested run per cell or
trial), read back as a pandas table by ``sweep_runs``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Metric, Param, RunTag

from maskgit_lab.config import ExperimentConfig, to_dict
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import redact_url, sqlite_init_lock


def logged_config(cfg: ExperimentConfig) -> dict:
    """The resolved config as logged and stored: the tracking URI redacted."""
    return {**to_dict(cfg), "mlflow_uri": redact_url(cfg.mlflow_uri)}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1} (lists as strings), for MLflow params."""
    out: dict[str, object] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v) if isinstance(v, list) else v
    return out


def artifact_root(cfg: ExperimentConfig) -> str:
    return (Path(cfg.runs_dir).resolve() / "mlartifacts").as_uri()


def mlflow_logger(cfg: ExperimentConfig, run_name: str, tags: dict[str, str] | None = None) -> MLFlowLogger:
    """Lightning's MLFlowLogger on the experiment's store, with the resolved config logged."""
    Path(cfg.runs_dir).mkdir(parents=True, exist_ok=True)
    try:
        # several training processes may open a new store at once (maskgit_lab.lit.pool)
        with sqlite_init_lock(cfg.tracking_uri):
            logger = MLFlowLogger(
                experiment_name=cfg.name,
                run_name=run_name,
                tracking_uri=cfg.tracking_uri,
                artifact_location=artifact_root(cfg) + f"/{cfg.name}",
                tags=tags,
            )
            logger.log_hyperparams(flatten(logged_config(cfg)))
            logger.experiment.log_text(logger.run_id, yaml.safe_dump(logged_config(cfg), sort_keys=False),
                                       "config.yaml")
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
        raise _store_error(cfg.tracking_uri, exc) from None
    return logger


def mlflow_client(tracking_uri: str) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri)


def experiment_id(client: mlflow.MlflowClient, name: str, artifact_location: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - another worker created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def _log_params(client: mlflow.MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def parent_run(client: mlflow.MlflowClient, exp_id: str, sweep_id: str, run_name: str, params: dict,
               tags: dict) -> str:
    """The sweep's parent run: the oldest live run tagged with ``sweep_id`` (created if none)."""

    def find():
        return client.search_runs([exp_id], f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'parent'",
                                  order_by=["attributes.start_time ASC"], max_results=5)

    found = find()
    if not found:
        run = client.create_run(exp_id, run_name=run_name, tags={**tags, "sweep_id": sweep_id, "sweep_role": "parent"})
        _log_params(client, run.info.run_id, params)
        found = find()
        if found[0].info.run_id != run.info.run_id:  # lost a race: use the first one
            client.delete_run(run.info.run_id)
    return found[0].info.run_id


def child_run(client: mlflow.MlflowClient, exp_id: str, parent_id: str, sweep_id: str, cell: str, run_name: str,
              params: dict) -> str:
    """A nested run for one cell/trial; earlier unfinished attempts of the same cell are deleted."""
    old = client.search_runs([exp_id], f"tags.sweep_id = '{sweep_id}' and tags.cell = '{cell}'", max_results=50)
    for r in old:
        client.delete_run(r.info.run_id)
    run = client.create_run(exp_id, run_name=run_name, tags={
        "mlflow.parentRunId": parent_id, "sweep_id": sweep_id, "sweep_role": "cell", "cell": cell})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _key_conflict(exc: Exception) -> bool:
    """A unique-key violation in the tracking store (SQLite or PostgreSQL, local or behind a server)."""
    text = str(exc).lower()
    return any(s in text for s in ("unique constraint", "duplicate key", "uniqueviolation", "integrityerror"))


def log_batch(client: mlflow.MlflowClient, run_id: str, metrics: dict[str, float | None] | None = None,
                tags: dict[str, object] | None = None, attempts: int = 5) -> None:
    """Metrics and tags of a run in one batch. A sweep's parent run is written by every worker:
    MLflow's SQL store checks for a key, then inserts, so two workers writing the same tag or
    latest metric at once can hit a unique-key violation; the batch (rolled back whole) is
    then written again, and this time updates what the other worker inserted."""
    if not any(v is not None for v in (metrics or {}).values()) and not tags:
        return
    for attempt in range(attempts):
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        try:
            client.log_batch(run_id, metrics=items, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == attempts - 1 or not _key_conflict(exc):
                raise
            time.sleep(0.1 * (attempt + 1))


class SweepLog:
    """MLflow side of a sweep: the parent run, and one nested run per cell or trial."""

    def __init__(self, cfg: ExperimentConfig, sid: str, kind: str, run_name: str, info: dict,
                 mutable: Iterable[str] = ()) -> None:
        """``mutable``: keys of ``info`` that may change between runs of one sweep (its grid:
        seeds, T values); they are tags of the parent, set on every run, not params."""
        self.cfg, self.sid = cfg, sid
        # A few key params for the UI's runs table; the whole resolved config is the artifact.
        text = {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in info.items()}
        mutable = set(mutable)
        key = {k: v for k, v in text.items() if k not in mutable}
        key.update({"sampling.schedule": cfg.sampling.schedule, "sampling.steps": cfg.sampling.steps,
                    "sampling.choice_temperature": cfg.sampling.choice_temperature,
                    "transformer.preset": cfg.transformer.preset, "tokenizer.codebook_size": cfg.tokenizer.codebook_size})
        try:
            with sqlite_init_lock(cfg.tracking_uri):  # one process at a time creates the store and the parent
                self.client = mlflow_client(cfg.tracking_uri)
                self.exp = experiment_id(self.client, cfg.name, artifact_root(cfg) + f"/{cfg.name}")
                # a readable, unique name: the kind, then the sweep's content hash
                self.parent = parent_run(self.client, self.exp, sid, f"{run_name} {sid.rsplit('.', 1)[-1]}", key,
                                         {"sweep_kind": kind, "sweep_info": json.dumps(info)})
        except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot use the MLflow tracking store {redact_url(cfg.tracking_uri)!r}: "
                              f"{redact_url(reason)}") from None
        log_batch(self.client, self.parent, tags={"sweep_info": json.dumps(info),
                                                    **{f"grid.{k}": text[k] for k in sorted(mutable)}})
        self.config_text = yaml.safe_dump(logged_config(cfg), sort_keys=False)
        if not self.client.list_artifacts(self.parent):
            self.client.log_text(self.parent, self.config_text, "config.yaml")

    def cell(self, cell: str, run_name: str, params: dict, work: Callable[[str], dict]) -> dict:
        """Run ``work(run_id)`` (returns metrics) inside a nested run; FINISHED only on success."""
        run_id = child_run(self.client, self.exp, self.parent, self.sid, cell, run_name, params)
        try:
            metrics = work(run_id)
            log_batch(self.client, run_id, metrics)
            self.client.log_text(run_id, self.config_text, "config.yaml")
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, "KILLED")
            raise
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return metrics

    def finished_cells(self) -> dict[str, dict[str, float]]:
        """The metrics of every FINISHED cell run of this sweep, by cell key."""
        out, token = {}, None
        while True:
            page = self.client.search_runs(
                [self.exp], f"tags.sweep_id = '{self.sid}' and tags.sweep_role = 'cell' and "
                "attributes.status = 'FINISHED'", max_results=1000, page_token=token)
            out.update({r.data.tags["cell"]: dict(r.data.metrics) for r in page})
            token = page.token
            if not token:
                return out

    def end(self, status: str, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
        """Close the parent run (FINISHED, FAILED or KILLED) with the sweep's headline numbers.
        Several workers share a parent: the last to end sets it."""
        log_batch(self.client, self.parent, metrics, tags)
        self.client.set_terminated(self.parent, status)

    def log_file(self, run_id: str, name: str, write: Callable[[Path], object]) -> None:
        """``write(path)`` makes a file (a figure, say) that becomes the run's artifact ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            self.client.log_artifact(run_id, str(path))


def _store_error(uri: str, exc: Exception) -> ConfigError:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"cannot use the MLflow tracking store {redact_url(uri)!r}: {redact_url(reason)}")


def sweep_runs(tracking_uri: str, experiment: str, sweep_id: str, allow_empty: bool = False) -> pd.DataFrame:
    """Finished cell runs of a sweep: one row per run, params and metrics as columns (none is a
    one-line error unless ``allow_empty``)."""
    try:
        mlflow.set_tracking_uri(tracking_uri)
        df = mlflow.search_runs(
            experiment_names=[experiment], output_format="pandas",
            filter_string=f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'cell' and attributes.status = 'FINISHED'",
        )
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
        raise _store_error(tracking_uri, exc) from None
    if df.empty:
        if allow_empty:
            return pd.DataFrame()
        raise ConfigError(f"no finished runs of sweep {sweep_id!r} in MLflow experiment {experiment!r}")
    out = pd.DataFrame({c[len("params."):]: df[c] for c in df.columns if c.startswith("params.")})
    for c in df.columns:
        if c.startswith("metrics."):
            out[c[len("metrics."):]] = df[c]
    out["run_id"] = df["run_id"]
    out["cell"] = df["tags.cell"]
    if out["cell"].duplicated().any():
        raise ConfigError(f"sweep {sweep_id} has several finished runs for one cell: "
                          f"{out['cell'][out['cell'].duplicated()].tolist()}")
    if "steps" in out and out["steps"].notna().all():
        out["steps"] = out["steps"].astype(int)
    return out


def sweep_parents(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """Every sweep's parent run in the experiment, newest first."""
    try:
        mlflow.set_tracking_uri(tracking_uri)
        return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.sweep_role = 'parent'",
                                  order_by=["attributes.start_time DESC"])
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
        raise _store_error(tracking_uri, exc) from None
