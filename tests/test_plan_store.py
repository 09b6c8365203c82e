"""Plans and run logs in object storage (issue 16, part 2), against a real `moto_server`.

Two workers share one database and one bucket but nothing on disk: worker A plans a
pull request in its own data dir, its data dir is then deleted, and worker B applies
from a fresh checkout of its own with the plan fetched from S3. Terraform keeps its
state in the same S3 server (the `s3` backend), so the apply is real end to end. The
attacks: an object replaced in the bucket is refused before Terraform sees it. Then
retention (a closed PR's plan objects go, an open PR's stay), encryption settings,
the run log served from the bucket, and the default local store left as it was.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from pydantic import SecretStr

from runner.commands.pr_flow import PullRequestFlow
from runner.settings import SettingsError, load_settings
from runner.store.plan_files import (
    Encryption,
    LocalPlanStore,
    PlanFileMismatch,
    PlanNotStored,
    S3PlanStore,
    build_plan_store,
)
from runner.store.runs import RunStatus
from runner.terraform.plan_flags import PlanFileUnreadable, flags_in_plan_file
from runner.terraform.planfile import plan_checksum
from runner.wiring import build_services
from tests.support.pr_world import PullRequestWorld, make_world

PLAN_BUCKET = "gitops-plans"
STATE_BUCKET = "tfstate"
PREFIX = "runner"


@dataclass(frozen=True)
class S3Server:
    url: str

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Server]:
    """`moto_server` in its own process on a free port (real HTTP, as MinIO would be)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The script installed beside this interpreter (the test extra), else one on PATH.
    beside = Path(sys.executable).with_name("moto_server")
    binary = str(beside) if beside.exists() else shutil.which("moto_server")
    if binary is None:
        pytest.fail("moto_server not found: install the test extra (moto[server])")
    command = [binary, "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as attempt:
            if attempt.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


@pytest.fixture
def s3(moto: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Credentials for boto3 (moto accepts any) and empty buckets for this test."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    client = moto.client()
    for bucket in (PLAN_BUCKET, STATE_BUCKET):
        _empty_bucket(client, bucket)
        client.create_bucket(Bucket=bucket)
    return moto


def _empty_bucket(client, bucket: str) -> None:
    try:
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    except client.exceptions.NoSuchBucket:
        return
    for item in listed:
        client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


# ---- the repository: one project whose state lives in the same S3 server --------------------


def project_files(s3: S3Server, name: str, value: str) -> dict[str, str]:
    """`infra/<name>`: one `terraform_data` whose state is `<name>/terraform.tfstate` in S3."""
    backend = f"""terraform {{
  backend "s3" {{
    bucket                      = "{STATE_BUCKET}"
    key                         = "{name}/terraform.tfstate"
    region                      = "us-east-1"
    access_key                  = "test"
    secret_key                  = "test"
    endpoints                   = {{ s3 = "{s3.url}" }}
    use_path_style              = true
    use_lockfile                = true
    skip_credentials_validation = true
    skip_region_validation      = true
    skip_requesting_account_id  = true
    skip_metadata_api_check     = true
    skip_s3_checksum            = true
  }}
}}
"""
    resource = f'resource "terraform_data" "{name}" {{\n  input = "{value}"\n}}\n'
    return {f"infra/{name}/backend.tf": backend, f"infra/{name}/main.tf": resource}


def svc_files(s3: S3Server, value: str) -> dict[str, str]:
    return project_files(s3, "svc", value)


def other_files(s3: S3Server, value: str) -> dict[str, str]:
    return project_files(s3, "other", value)


CONFIG = """version: 1
projects:
  - dir: infra/svc
    apply: both
  - dir: infra/other
    apply: both
"""


def state_input(s3: S3Server, name: str = "svc") -> str | None:
    """What Terraform's state in S3 says `terraform_data.<name>` holds (None: not created)."""
    client = s3.client()
    try:
        key = f"{name}/terraform.tfstate"
        body = client.get_object(Bucket=STATE_BUCKET, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    for resource in json.loads(body).get("resources", []):
        if resource["name"] == name:
            return resource["instances"][0]["attributes"]["input"]["value"]
    return None


def plan_objects(s3: S3Server) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=PLAN_BUCKET, Prefix=f"{PREFIX}/plans/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


# ---- two workers --------------------------------------------------------------------------


@dataclass
class TwoWorkers:
    a: PullRequestWorld  # plans
    b: PullRequestWorld  # applies: another data dir, the same database and bucket


@pytest.fixture
def workers(tmp_path: Path, s3: S3Server) -> Iterator[TwoWorkers]:
    yield from two_workers(tmp_path, s3)


def two_workers(tmp_path: Path, s3: S3Server, **settings: object) -> Iterator[TwoWorkers]:
    shared = {
        "database_url": f"sqlite:///{tmp_path}/shared.db",
        "plan_store": f"s3://{PLAN_BUCKET}/{PREFIX}",
        "s3_endpoint_url": s3.url,
        "s3_sse": "AES256",
        **settings,
    }
    a = make_world(tmp_path / "a", **shared)
    settings_b = load_settings(**(a.settings.model_dump() | {"data_dir": tmp_path / "b"}))
    services_b = build_services(settings_b)
    b = replace(a, settings=settings_b, services=services_b, flow=PullRequestFlow(services_b))
    main = {**svc_files(s3, "small"), **other_files(s3, "small"), "gitops-runner.yaml": CONFIG}
    a.commit_on_main(main)
    try:
        yield TwoWorkers(a, b)
    finally:
        a.github.stop()
        a.services.store.close()
        services_b.store.close()


def plans_of(world: PullRequestWorld, number: int):
    """The PR's appliable plans (repository keyed by the fake forge's host, as runs are)."""
    repo = world.services.store.runs.list_runs(pr_number=number)[0].repo
    return world.services.store.runs.latest_plans(repo, number)


def apply_runs(world: PullRequestWorld, number: int):
    return [
        r for r in world.services.store.runs.list_runs(pr_number=number) if r.command == "apply"
    ]


def test_a_plan_made_by_worker_a_is_applied_by_worker_b_from_s3(workers, s3):
    a, b = workers.a, workers.b
    number = a.open_pr("bigger", svc_files(s3, "large"))
    [plan] = plans_of(a, number)
    assert plan_objects(s3) == [f"{PREFIX}/plans/{plan.checksum}.tfplan"]
    _forget_worker_a(a)

    b.comment(number, "gitops apply")

    assert [run.status for run in apply_runs(b, number)] == [RunStatus.SUCCESS]
    assert state_input(s3) == "large"
    fetched = b.settings.data_dir / "repos"
    assert any(p.name == "gitops-default.tfplan" for p in fetched.rglob("*.tfplan"))
    assert "applied" in b.last_comment(number).lower()


def swap_plan_object(s3: S3Server, world: PullRequestWorld, reviewed: int, other: int) -> None:
    """The attack: the object of PR `reviewed`'s plan now holds PR `other`'s plan."""
    [plan] = plans_of(world, reviewed)
    [swap] = plans_of(world, other)
    client = s3.client()
    evil = client.get_object(Bucket=PLAN_BUCKET, Key=f"{PREFIX}/plans/{swap.checksum}.tfplan")
    client.put_object(
        Bucket=PLAN_BUCKET, Key=f"{PREFIX}/plans/{plan.checksum}.tfplan", Body=evil["Body"].read()
    )


def test_a_replaced_object_in_the_bucket_is_refused_before_terraform(workers, s3):
    a, b = workers.a, workers.b
    reviewed = a.open_pr("bigger", svc_files(s3, "large"))
    other = a.open_pr("elsewhere", other_files(s3, "huge"))  # a plan of another project
    swap_plan_object(s3, a, reviewed, other)
    _forget_worker_a(a)

    b.comment(reviewed, "gitops apply")

    reply = b.last_comment(reviewed)
    assert "does not match the checksum" in reply and "plan again" in reply
    assert apply_runs(b, reviewed) == []
    # Nothing was applied: neither the reviewed plan nor the one swapped in.
    assert state_input(s3, "svc") is None and state_input(s3, "other") is None
    assert not list((b.settings.data_dir / "repos").rglob("*.tfplan"))


def test_a_closed_prs_plan_objects_go_after_the_retention(workers, s3):
    a = workers.a
    closed = a.open_pr("abandoned", svc_files(s3, "large"))
    still_open = a.open_pr("pending", other_files(s3, "medium"))
    [gone] = plans_of(a, closed)
    [kept] = plans_of(a, still_open)
    a.close(closed)
    store = a.services.plan_store
    live = a.services.store.runs.live_plan_checksums

    assert store.expire(live) == 0  # younger than the retention: everything stays
    later = datetime.now(UTC) + timedelta(days=a.settings.plan_store_retention_days, minutes=1)
    assert store.expire(live, now=later) == 1

    assert plan_objects(s3) == [f"{PREFIX}/plans/{kept.checksum}.tfplan"]
    assert gone.checksum != kept.checksum


def test_objects_are_encrypted_server_side(workers, s3):
    number = workers.a.open_pr("bigger", svc_files(s3, "large"))
    [plan] = plans_of(workers.a, number)

    head = s3.client().head_object(Bucket=PLAN_BUCKET, Key=f"{PREFIX}/plans/{plan.checksum}.tfplan")

    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["sha256"] == plan.checksum


def test_the_plan_log_is_served_from_the_bucket_by_another_machine(workers, s3):
    from runner.web.app import create_app
    from runner.wiring import build_web_services

    a, b = workers.a, workers.b
    number = a.open_pr("bigger", svc_files(s3, "large"))
    [run] = [r for r in a.services.store.runs.list_runs(pr_number=number) if r.command == "plan"]
    written = Path(run.log_path or "").read_text()
    _forget_worker_a(a)
    settings = b.settings.model_copy(update={"api_token": _secret("viewer-token")})
    app = create_app(settings, build_web_services(settings))

    response = app.test_client().get(
        f"/api/runs/{run.id}/log", headers={"Authorization": "Bearer viewer-token"}
    )

    assert response.status_code == 200
    assert response.get_data(as_text=True) == written
    assert "terraform_data.svc" in written


def _secret(value: str) -> SecretStr:
    return SecretStr(value)


def _forget_worker_a(world: PullRequestWorld) -> None:
    """Worker A is gone: nothing it wrote on disk is left (the database is elsewhere)."""
    shutil.rmtree(world.settings.data_dir)


# ---- policies on the worker that applies -----------------------------------------------------

# A value nobody may set, and no targeted plan applied (`run.plan_flags`).
GUARDRAILS = """package main

deny[msg] {
  rc := input.resource_changes[_]
  rc.change.after.input == "forbidden"
  msg := sprintf("%s may not hold forbidden", [rc.address])
}

deny[msg] {
  flag := input.run.plan_flags[_]
  startswith(flag, "-target=")
  msg := sprintf("a targeted plan is not applied (%s)", [flag])
}
"""


@pytest.fixture
def policed(tmp_path: Path, s3: S3Server) -> Iterator[TwoWorkers]:
    """The two workers with one policy set, owned by bob."""
    rules = tmp_path / "policies" / "guardrails"
    rules.mkdir(parents=True)
    (rules / "guardrails.rego").write_text(GUARDRAILS)
    policy_set = {"name": "guardrails", "path": str(rules), "owners": ["bob"]}
    yield from two_workers(tmp_path, s3, policy_sets=(policy_set,))


def reply_text(world: PullRequestWorld, number: int) -> str:
    """The last comment without Markdown escapes."""
    return world.last_comment(number).replace("\\", "")


def kept_json_plans(world: PullRequestWorld) -> list[str]:
    return sorted(path.stem for path in (world.settings.data_dir / "plan-json").rglob("*.json"))


def test_a_passing_policy_is_evaluated_on_worker_b_and_it_applies(policed, s3):
    a, b = policed.a, policed.b
    number = a.open_pr("bigger", svc_files(s3, "large"))
    [plan] = plans_of(a, number)
    _forget_worker_a(a)
    assert kept_json_plans(b) == []

    b.comment(number, "gitops apply")

    assert [run.status for run in apply_runs(b, number)] == [RunStatus.SUCCESS]
    assert state_input(s3) == "large"
    # B judged a JSON plan it derived from the verified plan file, and kept it.
    assert kept_json_plans(b) == [plan.checksum]


def test_a_failing_policy_still_blocks_the_apply_on_worker_b(policed, s3):
    a, b = policed.a, policed.b
    number = a.open_pr("sneaky", svc_files(s3, "forbidden"))
    assert "may not hold forbidden" in a.last_comment(number)
    _forget_worker_a(a)

    b.comment(number, "gitops apply")

    reply = reply_text(b, number)
    assert "policies failed (`guardrails`)" in reply and "may not hold forbidden" in reply
    assert apply_runs(b, number) == [] and state_input(s3) is None
    # An owner's approval, given on B, is honoured there like anywhere else.
    b.comment(number, "gitops approve_policies", user="bob")
    b.comment(number, "gitops apply")
    assert [run.status for run in apply_runs(b, number)] == [RunStatus.SUCCESS]
    assert state_input(s3) == "forbidden"


def test_a_targeted_plan_keeps_its_flags_on_worker_b(policed, s3):
    """The attack: flags live only beside A's JSON plan; B must not judge the plan without them."""
    a, b = policed.a, policed.b
    number = a.open_pr("bigger", svc_files(s3, "large"))
    a.comment(number, "gitops plan -p infra/svc -- -target=terraform_data.svc")
    assert "a targeted plan is not applied" in a.last_comment(number)
    _forget_worker_a(a)

    b.comment(number, "gitops apply")

    assert "a targeted plan is not applied (-target=terraform_data.svc)" in reply_text(b, number)
    assert apply_runs(b, number) == [] and state_input(s3) is None


def test_a_replaced_object_is_refused_before_any_policy_reads_it(policed, s3):
    a, b = policed.a, policed.b
    reviewed = a.open_pr("bigger", svc_files(s3, "large"))
    other = a.open_pr("elsewhere", other_files(s3, "forbidden"))
    swap_plan_object(s3, a, reviewed, other)
    _forget_worker_a(a)

    b.comment(reviewed, "gitops apply")

    reply = reply_text(b, reviewed)
    assert "policies: the plan file in the plan store does not match the checksum" in reply
    assert apply_runs(b, reviewed) == [] and kept_json_plans(b) == []
    assert state_input(s3, "svc") is None and state_input(s3, "other") is None


def test_a_plan_gone_from_the_bucket_is_refused_by_the_policy_gate(policed, s3):
    a, b = policed.a, policed.b
    number = a.open_pr("bigger", svc_files(s3, "large"))
    [plan] = plans_of(a, number)
    s3.client().delete_object(Bucket=PLAN_BUCKET, Key=f"{PREFIX}/plans/{plan.checksum}.tfplan")
    _forget_worker_a(a)

    b.comment(number, "gitops apply")

    assert "its plan file is gone; plan again" in reply_text(b, number)
    assert apply_runs(b, number) == [] and state_input(s3) is None


def test_flags_are_read_from_a_plan_file_and_garbage_is_refused(tmp_path: Path):
    not_a_plan = tmp_path / "x.tfplan"
    not_a_plan.write_bytes(b"not a zip")
    with pytest.raises(PlanFileUnreadable):
        flags_in_plan_file(not_a_plan, {})
    truncated = tmp_path / "t.tfplan"
    with zipfile.ZipFile(truncated, "w") as archive:
        archive.writestr("tfplan", b"\x2a\x10terraform")  # says 16 bytes, holds 9
    with pytest.raises(PlanFileUnreadable):
        flags_in_plan_file(truncated, {})
    planned = tmp_path / "p.tfplan"
    with zipfile.ZipFile(planned, "w") as archive:  # version 3, a target, destroy mode
        archive.writestr("tfplan", b"\x08\x03\x2a\x06null.a\x88\x01\x01")
    replaced = {"resource_changes": [{"address": "b.c", "action_reason": "replace_by_request"}]}
    assert flags_in_plan_file(planned, replaced) == ("-target=null.a", "-replace=b.c", "-destroy")


# ---- the store on its own -------------------------------------------------------------------


def test_fetch_verifies_the_bytes_and_leaves_nothing_behind(tmp_path: Path, s3):
    store = build_plan_store(f"s3://{PLAN_BUCKET}/{PREFIX}", endpoint_url=s3.url)
    assert isinstance(store, S3PlanStore)
    plan = tmp_path / "made.tfplan"
    plan.write_bytes(b"plan bytes")
    checksum = plan_checksum(plan)
    store.keep_plan(plan, checksum)
    destination = tmp_path / "checkout" / "gitops-default.tfplan"

    assert store.fetch_plan(checksum, destination).read_bytes() == b"plan bytes"

    s3.client().put_object(
        Bucket=PLAN_BUCKET, Key=f"{PREFIX}/plans/{checksum}.tfplan", Body=b"other bytes"
    )
    destination.unlink()
    with pytest.raises(PlanFileMismatch):
        store.fetch_plan(checksum, destination)
    with pytest.raises(PlanNotStored):
        store.fetch_plan("0" * 64, destination)
    assert sorted(p.name for p in destination.parent.iterdir()) == []
    assert store.read_log("no-such-run.log") is None
    assert store.read_log("../plans/" + checksum + ".tfplan") is None  # never outside logs/


def test_bad_plan_store_settings_say_which_variable(tmp_path: Path):
    with pytest.raises(SettingsError, match="GITOPS_PLAN_STORE"):
        build_plan_store("https://bucket.example/plans")
    with pytest.raises(SettingsError, match="GITOPS_S3_SSE=aws:kms"):
        Encryption("AES256", "arn:aws:kms:key")
    assert Encryption("aws:kms", "key-1").upload_args() == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "key-1",
    }


def test_without_a_plan_store_plans_stay_on_the_machine_that_made_them(tmp_path: Path):
    """The default is today's behaviour: nothing uploaded, another data dir cannot apply."""
    a = make_world(tmp_path / "a", database_url=f"sqlite:///{tmp_path}/shared.db")
    try:
        assert isinstance(a.services.plan_store, LocalPlanStore)
        settings_b = load_settings(**(a.settings.model_dump() | {"data_dir": tmp_path / "b"}))
        services_b = build_services(settings_b)
        b = replace(a, settings=settings_b, services=services_b, flow=PullRequestFlow(services_b))
        number = a.open_pr("app", {"infra/app/extra.tf": 'output "y" {\n  value = 2\n}\n'})
        assert plans_of(a, number)
        _forget_worker_a(a)

        b.comment(number, "gitops apply")

        assert "missing or was modified" in b.last_comment(number)
        assert apply_runs(b, number) == []
        services_b.store.close()
    finally:
        a.github.stop()
        a.services.store.close()
