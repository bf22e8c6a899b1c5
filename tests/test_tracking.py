"""Writes to a sweep's parent run, which every worker shares (``tracking.log_batch``)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from maskgit_lab import tracking


class RacedClient(mlflow.MlflowClient):
    """A real client on a real store; its first ``log_batch`` loses a race to another worker,
    which writes the same tag first, and fails the way MLflow's SQL store then fails."""

    def __init__(self, uri: str, error: str) -> None:
        super().__init__(uri)
        self.error, self.calls = error, 0

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kw):
        self.calls += 1
        if self.calls == 1:
            super().log_batch(run_id, tags=[mlflow.entities.RunTag("grid.seeds", "[0]")])  # the other worker
            raise MlflowException(self.error)
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kw)


def run_in(tmp_path, client):
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    return client.create_run(exp).info.run_id


@pytest.mark.parametrize("error", [
    "(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid",
    'BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "tag_pk"'])
def test_a_write_that_lost_a_key_race_is_written_again(tmp_path, error):
    client = RacedClient(f"sqlite:///{tmp_path / 'm.db'}", error)
    run_id = run_in(tmp_path, client)
    tracking.log_batch(client, run_id, {"best_fid": 3.5}, {"grid.seeds": "[0, 1]"})
    data = client.get_run(run_id).data
    assert client.calls == 2 and data.tags["grid.seeds"] == "[0, 1]" and data.metrics["best_fid"] == 3.5


def test_other_errors_are_not_retried(tmp_path):
    client = RacedClient(f"sqlite:///{tmp_path / 'm.db'}", "RESOURCE_DOES_NOT_EXIST: run not found")
    run_id = run_in(tmp_path, client)
    with pytest.raises(MlflowException, match="run not found"):
        tracking.log_batch(client, run_id, tags={"grid.seeds": "[0, 1]"})
    assert client.calls == 1
