"""Writes that several workers of a sweep make at once (a parent run, an experiment's tags)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from maskgit_lab import tracking


class RacedClient(mlflow.MlflowClient):
    """A real client on a real store; its first write of ``method`` loses a race to another
    worker, which writes the same key first, and fails the way MLflow's SQL store then fails."""

    def __init__(self, uri: str, error: str, method: str = "log_batch") -> None:
        super().__init__(uri)
        self.error, self.method, self.calls = error, method, 0

    def _race(self, name, real, *args, **kwargs):
        if name != self.method:
            return real(*args, **kwargs)
        self.calls += 1
        if self.calls == 1:
            real(*args, **kwargs)  # the other worker
            raise MlflowException(self.error)
        return real(*args, **kwargs)

    def log_batch(self, *args, **kwargs):
        return self._race("log_batch", super().log_batch, *args, **kwargs)

    def set_experiment_tag(self, *args, **kwargs):
        return self._race("set_experiment_tag", super().set_experiment_tag, *args, **kwargs)


def run_in(tmp_path, client):
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    return client.create_run(exp).info.run_id


# What several workers of a sweep write at once: (client method it calls, the write, its check).
SHARED_WRITES = {
    "parent run": ("log_batch", lambda c, exp, run: tracking.log_batch(c, run, {"best_fid": 3.5}, {"grid.seeds": "[0, 1]"}),
                   lambda c, exp, run: c.get_run(run).data.tags["grid.seeds"] == "[0, 1]"
                   and c.get_run(run).data.metrics["best_fid"] == 3.5),
    "saved view": ("set_experiment_tag",
                   lambda c, exp, run: tracking.save_view(c, exp, "v1", "cells", "tags.x = '1'", ["schedule"]),
                   lambda c, exp, run: "cells" in c.get_experiment(exp).tags[f"{tracking.VIEW_TAG_PREFIX}v1"]),
    "experiment kind": ("set_experiment_tag", lambda c, exp, run: tracking.mark_model_training(c, exp),
                        lambda c, exp, run: c.get_experiment(exp).tags[tracking.EXPERIMENT_KIND_TAG]
                        == tracking.MODEL_TRAINING),
}


@pytest.mark.parametrize("what", list(SHARED_WRITES))
@pytest.mark.parametrize("error", [
    "(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid",
    'BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "tag_pk"'])
def test_a_write_that_lost_a_key_race_is_written_again(tmp_path, error, what):
    method, write, written = SHARED_WRITES[what]
    client = RacedClient(f"sqlite:///{tmp_path / 'm.db'}", error, method)
    run_id = run_in(tmp_path, client)
    exp = client.get_run(run_id).info.experiment_id
    write(client, exp, run_id)
    assert client.calls == 2 and written(client, exp, run_id)


def test_other_errors_are_not_retried(tmp_path):
    client = RacedClient(f"sqlite:///{tmp_path / 'm.db'}", "RESOURCE_DOES_NOT_EXIST: run not found")
    run_id = run_in(tmp_path, client)
    with pytest.raises(MlflowException, match="run not found"):
        tracking.log_batch(client, run_id, tags={"grid.seeds": "[0, 1]"})
    assert client.calls == 1
