"""A run finished on another machine: its log page and stream read the plan store (S3).

Two workers share a database and a bucket (`moto_server`, real HTTP), nothing on disk:
worker A plans a pull request, its data dir is deleted, and worker B's dashboard serves
the run's log, as text and as a finished stream, from the bucket. The S3 fixtures are
tests/test_plan_store.py's own, so both files test against the same setup.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import SecretStr

from runner.web.app import create_app
from runner.wiring import build_web_services
from tests.support.auth import bearer
from tests.test_plan_store import moto, s3, svc_files, workers  # noqa: F401 (fixtures)


def test_a_run_log_from_another_machine_streams_from_the_bucket(workers, s3) -> None:  # noqa: F811
    a, b = workers.a, workers.b
    number = a.open_pr("bigger", svc_files(s3, "large"))
    [run] = [r for r in a.services.store.runs.list_runs(pr_number=number) if r.command == "plan"]
    written = Path(run.log_path or "").read_text()
    shutil.rmtree(a.settings.data_dir)  # worker A is gone, and its disk with it
    settings = b.settings.model_copy(update={"api_token": SecretStr("viewer-token")})
    client = create_app(settings, build_web_services(settings)).test_client()

    text = client.get(f"/api/v1/runs/{run.id}/log", headers=bearer("viewer-token"))
    stream = client.get(f"/api/v1/runs/{run.id}/log/stream", headers=bearer("viewer-token"))

    assert text.get_data(as_text=True) == written
    body = stream.get_data(as_text=True)
    assert stream.mimetype == "text/event-stream"
    assert "terraform_data.svc" in body
    assert body.rstrip().endswith(f"event: end\ndata: {run.status.value}")
