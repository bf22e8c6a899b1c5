"""Everything MLflow: the store (a local SQLite file by default), Lightning's logger for the
training stages, and the sweeps' runs (one parent per sweep, one nested run per cell or
trial), read back as a pandas table by ``sweep_runs``; the UI's address of each.

Experiments: training runs in ``<experiment>``, each sweep kind's runs in
``<experiment>/<kind>``, all tagged as model-training experiments; the links printed carry
``workflowType=machine_learning``, which the installed UI (3.x) reads to open on the runs list
rather than a GenAI overview.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import mlflow
import pandas as pd
import yaml
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Metric, Param, RunTag

from maskgit_lab.config import ExperimentConfig, to_dict
from maskgit_lab.errors import ConfigError, at_abort, deferred_interrupts
from maskgit_lab.io import check_output_dir, sqlite_init_lock
from maskgit_lab.redact import reason, redact_text, redact_tree, redact_url

EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# A saved view of the runs table (the UI's "Views" menu, and a link that opens it): experiment
# tag VIEW_TAG_PREFIX + id holding {"name", "createdAt", "updatedAt", "state": JSON}.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_METRICS = ("fid", "precision", "recall", "class_consistency")
UI_ADDRESS = "http://127.0.0.1:5000"  # `make ui` over the default SQLite store


def sweep_experiment(name: str, kind: str) -> str:
    """The MLflow experiment of one sweep kind's runs."""
    return f"{name}/{kind}"


def training_params(cfg: ExperimentConfig, stage: str) -> dict[str, object]:
    """The settings a reader compares between training runs (the whole config is the run's
    ``config.yaml`` artifact)."""
    t = cfg.tokenizer_train if stage == "tokenizer" else cfg.transformer_train
    return {"stage": stage, "schedule": cfg.transformer_train.schedule if stage != "tokenizer" else "",
            "max_steps": t.max_steps, "batch_size": t.batch_size, "lr": t.lr, "seed": t.seed,
            "precision": t.precision or cfg.precision, "preset": cfg.transformer.preset,
            "layout": cfg.transformer.layout if stage != "tokenizer" else cfg.tokenizer.layout,
            "codebook_size": cfg.tokenizer.codebook_size, "data": cfg.data.name, "data.root": cfg.data.root}


def ui_base(tracking_uri: str) -> str:
    """Where the MLflow UI of this store is: the tracking server itself, else `make ui`'s address."""
    if tracking_uri.startswith(("http://", "https://")):
        return redact_url(tracking_uri).rstrip("/")
    return UI_ADDRESS


ML_WORKFLOW = "workflowType=machine_learning"  # the UI's "Model training" side: runs, not traces


def experiment_url(base: str, exp_id: str, tail: str = "", query: str = "") -> str:
    """A page of the experiment in the UI at ``base``, on its model-training side."""
    return f"{base}/#/experiments/{exp_id}{tail}?{query + '&' if query else ''}{ML_WORKFLOW}"


def run_url(tracking_uri: str, exp_id: str, run_id: str) -> str:
    return experiment_url(ui_base(tracking_uri), exp_id, f"/runs/{run_id}")


def view_url(tracking_uri: str, exp_id: str, view_id: str) -> str:
    """The experiment's runs table under a saved view."""
    return experiment_url(ui_base(tracking_uri), exp_id, "/runs", f"viewStateShareKey={view_id}")


def experiment_links(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(name, runs-table URL) of each experiment the suite made in the store (tagged as model training)."""
    try:
        exps = mlflow_client(tracking_uri).search_experiments(
            filter_string=f"tags.`{EXPERIMENT_KIND_TAG}` = '{MODEL_TRAINING}'", order_by=["name ASC"])
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreadable store: one line
        raise _store_error(tracking_uri, exc) from None
    return [(e.name, experiment_url(base, e.experiment_id, "/runs")) for e in exps]


def save_view(client: mlflow.MlflowClient, exp_id: str, view_id: str, name: str, search: str,
              params: list[str], metrics: tuple[str, ...] = VIEW_METRICS) -> None:
    """A saved view of the runs table: the runs ``search`` finds, sorted by FID, with these
    params and metrics as columns (set once; every worker of a sweep asks for the same)."""
    tag = f"{VIEW_TAG_PREFIX}{view_id}"
    if tag in client.get_experiment(exp_id).tags:
        return
    state = {"searchFilter": search, "orderByKey": "metrics.`fid`", "orderByAsc": True,
             "selectedColumns": [f"params.`{p}`" for p in params] + [f"metrics.`{m}`" for m in metrics]}
    now = int(time.time() * 1000)
    value = json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})
    shared_write(lambda: client.set_experiment_tag(exp_id, tag, value))


def compare_url(tracking_uri: str, exp_id: str, run_ids: list[str]) -> str:
    """The UI's Compare page of these runs."""
    runs = quote(json.dumps(sorted(run_ids), separators=(",", ":")), safe="")
    return (f"{ui_base(tracking_uri)}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([exp_id]), safe='')}"
            f"&{ML_WORKFLOW}")


def logged_config(cfg: ExperimentConfig) -> dict:
    """The resolved config as logged and stored: the tracking URI redacted."""
    return {**to_dict(cfg), "mlflow_uri": redact_url(cfg.mlflow_uri)}


def artifact_root(cfg: ExperimentConfig) -> str:
    return (Path(cfg.runs_dir).resolve() / "mlartifacts").as_uri()


def mlflow_logger(cfg: ExperimentConfig, run_name: str, tags: dict[str, str] | None = None,
                  stage: str = "transformer") -> MLFlowLogger:
    """Lightning's MLFlowLogger on the experiment's store: the settings a reader compares as
    params, the whole resolved config as the ``config.yaml`` artifact."""
    Path(cfg.runs_dir).mkdir(parents=True, exist_ok=True)
    try:
        # several training processes may open a new store at once (maskgit_lab.lit.pool)
        with sqlite_init_lock(cfg.tracking_uri):
            # created (and marked as model training) here, where workers racing to create it agree
            location = artifact_root(cfg) + f"/{cfg.name}"
            experiment_id(mlflow_client(cfg.tracking_uri), cfg.name, location)
            logger = MLFlowLogger(
                experiment_name=cfg.name,
                run_name=run_name,
                tracking_uri=cfg.tracking_uri,
                artifact_location=location,
                tags=tags,
            )
            with deferred_interrupts():  # the logger creates its run here
                _OPEN_RUNS[logger.run_id] = cfg.tracking_uri
            logger.log_hyperparams(redact_tree(training_params(cfg, stage)))
            logger.experiment.log_text(logger.run_id, yaml.safe_dump(logged_config(cfg), sort_keys=False),
                                       "config.yaml")
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
        raise _store_error(cfg.tracking_uri, exc) from None
    return logger


def mlflow_client(tracking_uri: str) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri)


def preflight(cfg: ExperimentConfig, log: bool = True) -> None:
    """Before any work: the runs folder can be written and, when logging, the MLflow store
    answers (one try, no retries); else a one-line ConfigError and nothing written."""
    runs = Path(cfg.runs_dir)
    check_output_dir(runs, "runs_dir")
    top = next((p for p in (runs, *runs.parents) if p.exists()), runs)
    try:  # a nameless file (O_TMPFILE): what permissions, a read-only mount or a full disk allow
        with tempfile.TemporaryFile(dir=top):
            pass
    except OSError as exc:
        raise ConfigError(f"runs_dir {runs} cannot be written: {top}: {exc.strerror or exc}") from None
    if not log or cfg.tracking_uri.startswith("sqlite:"):
        return  # a local store is created in the runs folder
    try:
        with _one_try():
            mlflow.MlflowClient(cfg.tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
        raise _store_error(cfg.tracking_uri, exc) from None


def mark_model_training(client: mlflow.MlflowClient, exp_id: str) -> None:
    """Tag the experiment as model training, so the UI opens it on its runs."""
    if client.get_experiment(exp_id).tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        shared_write(lambda: client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING))


def experiment_id(client: mlflow.MlflowClient, name: str, artifact_location: str) -> str:
    """The id of experiment ``name`` (created, marked as model training, if missing)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_location,
                                              tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except Exception:  # noqa: BLE001 - another worker created it meanwhile
            exp_id = client.get_experiment_by_name(name).experiment_id
    else:
        exp_id = exp.experiment_id
    mark_model_training(client, exp_id)
    return exp_id


# The runs this process created and has not ended: {run id: tracking URI}.
_OPEN_RUNS: dict[str, str] = {}


def create_run(client: mlflow.MlflowClient, exp_id: str, run_name: str, tags: dict) -> str:
    """A new run, recorded as open in the same step (a signal cannot fall between the two):
    a command that ends on an error or a signal ends it (``end_open_runs``)."""
    with deferred_interrupts():
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        _OPEN_RUNS[run_id] = client.tracking_uri
    return run_id


def end_run(client: mlflow.MlflowClient, run_id: str, status: str) -> None:
    """End a run as FINISHED, FAILED or KILLED."""
    client.set_terminated(run_id, status)
    _OPEN_RUNS.pop(run_id, None)


@contextlib.contextmanager
def _one_try() -> Iterator[None]:
    """Inside the block MLflow's HTTP client tries a tracking server once, for at most 10 s."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def end_open_runs(interrupted: bool) -> None:
    """Every run this process created and left RUNNING ends KILLED (``interrupted``) or FAILED."""
    with _one_try():
        for run_id, uri in list(_OPEN_RUNS.items()):
            _OPEN_RUNS.pop(run_id)
            try:
                client = mlflow.MlflowClient(uri)
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
            except Exception:  # noqa: BLE001, S112 - the store may be what failed; the others still get ended
                continue


at_abort(end_open_runs)


def _log_params(client: mlflow.MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(k, redact_text(v)[:6000]) for k, v in params.items()]
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
        run_id = create_run(client, exp_id, run_name, {**tags, "sweep_id": sweep_id, "sweep_role": "parent"})
        _log_params(client, run_id, params)
        found = find()
        if found[0].info.run_id != run_id:  # lost a race: use the first one
            client.delete_run(run_id)
            _OPEN_RUNS.pop(run_id, None)
    return found[0].info.run_id


def child_run(client: mlflow.MlflowClient, exp_id: str, parent_id: str, sweep_id: str, cell: str, run_name: str,
              params: dict) -> str:
    """A nested run for one cell/trial; earlier unfinished attempts of the same cell are deleted."""
    old = client.search_runs([exp_id], f"tags.sweep_id = '{sweep_id}' and tags.cell = '{cell}'", max_results=50)
    for r in old:
        client.delete_run(r.info.run_id)
    ids = {k: str(v) for k, v in params.items() if is_identity(k)}
    run_id = create_run(client, exp_id, run_name, {
        **ids, "mlflow.parentRunId": parent_id, "sweep_id": sweep_id, "sweep_role": "cell", "cell": cell})
    _log_params(client, run_id, {k: v for k, v in params.items() if k not in ids})
    return run_id


def is_identity(key: str) -> bool:
    """Content hashes and the code version identify a cell's inputs: tags, not params, so the
    UI's params (its columns, Compare's axes) are the settings a reader compares."""
    return key.endswith(("_sha", "_identity")) or key == "git_commit"


def _key_conflict(exc: Exception) -> bool:
    """A unique-key violation in the tracking store (SQLite or PostgreSQL, local or behind a server)."""
    text = str(exc).lower()
    return any(s in text for s in ("unique constraint", "duplicate key", "uniqueviolation", "integrityerror"))


def shared_write(write: Callable[[], object], attempts: int = 5) -> None:
    """A write to what several workers write at once (a sweep's parent run, an experiment's
    tags). MLflow's SQL store checks for a key, then inserts, so two workers writing the same
    key at once can hit a unique-key violation; the write (rolled back whole) is made again,
    and this time updates what the other worker inserted."""
    for attempt in range(attempts):
        try:
            write()
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == attempts - 1 or not _key_conflict(exc):
                raise
            time.sleep(0.1 * (attempt + 1))


def log_batch(client: mlflow.MlflowClient, run_id: str, metrics: dict[str, float | None] | None = None,
              tags: dict[str, object] | None = None) -> None:
    """Metrics and tags of a run in one batch (a shared write)."""
    if not any(v is not None for v in (metrics or {}).values()) and not tags:
        return

    def write() -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        client.log_batch(run_id, metrics=items, tags=[RunTag(k, redact_text(v)) for k, v in (tags or {}).items()])

    shared_write(write)


class SweepLog:
    """MLflow side of a sweep: the parent run, and one nested run per cell or trial."""

    def __init__(self, cfg: ExperimentConfig, sid: str, kind: str, run_name: str, info: dict,
                 mutable: Iterable[str] = (), view_params: Iterable[str] = (),
                 compared_params: Iterable[str] = ()) -> None:
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
                self.experiment = sweep_experiment(cfg.name, kind)
                self.exp = experiment_id(self.client, self.experiment, artifact_root(cfg) + f"/{self.experiment}")
                # a readable, unique name: the kind, then the sweep's content hash
                self.parent = parent_run(self.client, self.exp, sid, f"{run_name} {sid.rsplit('.', 1)[-1]}", key,
                                         {"sweep_kind": kind, "sweep_info": json.dumps(info)})
        except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
            raise _store_error(cfg.tracking_uri, exc) from None
        log_batch(self.client, self.parent, tags={"sweep_info": json.dumps(info),
                                                    **{f"grid.{k}": text[k] for k in sorted(mutable)}})
        self.view = sid.rsplit(".", 1)[-1]
        self.view_params, self.compared_params = list(view_params), list(compared_params)
        save_view(self.client, self.exp, self.view, f"{run_name} {self.view}: cells by FID",
                  f"tags.sweep_id = '{sid}' and tags.sweep_role = 'cell'", self.view_params)
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
            end_run(self.client, run_id, "KILLED")
            raise
        except BaseException:
            end_run(self.client, run_id, "FAILED")
            raise
        end_run(self.client, run_id, "FINISHED")
        return metrics

    def _finished(self):
        """The sweep's FINISHED cell runs, page by page."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.exp], f"tags.sweep_id = '{self.sid}' and tags.sweep_role = 'cell' and "
                "attributes.status = 'FINISHED'", max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def finished_cells(self) -> dict[str, dict[str, float]]:
        """The metrics of every FINISHED cell run of this sweep, by cell key."""
        return {r.data.tags["cell"]: dict(r.data.metrics) for r in self._finished()}

    def grid_run_ids(self) -> list[str]:
        """The FINISHED cell runs on the sweep's main grid (those with every compared param)."""
        return [r.info.run_id for r in self._finished() if all(k in r.data.params for k in self.compared_params)]

    def links(self) -> list[str]:
        """Where to look in the UI: the sweep's cells by FID, its run, the Compare page of its grid's cells."""
        uri = self.cfg.tracking_uri
        local = " (`make ui` serves it)" if ui_base(uri) == UI_ADDRESS else ""
        lines = [f"MLflow{local}: its cells by FID: {view_url(uri, self.exp, self.view)}",
                 f"MLflow: the sweep's run: {run_url(uri, self.exp, self.parent)}"]
        cells = self.grid_run_ids()
        if cells:
            lines.append(f"MLflow: compare its {len(cells)} cells: {compare_url(uri, self.exp, cells)}")
        return lines

    def end(self, status: str, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
        """Close the parent run (FINISHED, FAILED or KILLED) with the sweep's headline numbers.
        Several workers share a parent: the last to end sets it."""
        log_batch(self.client, self.parent, metrics, tags)
        end_run(self.client, self.parent, status)

    def log_file(self, run_id: str, name: str, write: Callable[[Path], object]) -> None:
        """``write(path)`` makes a file (a figure, say) that becomes the run's artifact ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            self.client.log_artifact(run_id, str(path))


def _store_error(uri: str, exc: Exception) -> ConfigError:
    return ConfigError(f"cannot use the MLflow tracking store {redact_url(uri)!r}: {reason(exc)}")


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
        if c.startswith("tags.") and is_identity(c[len("tags."):]):
            out[c[len("tags."):]] = df[c]
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


def sweep_parents(tracking_uri: str, name: str) -> pd.DataFrame:
    """Every sweep's parent run in the sweep experiments of experiment ``name``, newest first."""
    try:
        client = mlflow_client(tracking_uri)
        ids = [e.experiment_id for e in client.search_experiments(filter_string=f"name LIKE '{name}/%'")]
        if not ids:
            return pd.DataFrame()
        return mlflow.search_runs(experiment_ids=ids, filter_string="tags.sweep_role = 'parent'",
                                  order_by=["attributes.start_time DESC"])
    except Exception as exc:  # noqa: BLE001 - a bad URI or an unreachable server: one line
        raise _store_error(tracking_uri, exc) from None
