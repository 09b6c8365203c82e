"""What can be proven about the deployment files without a container engine (issue 16, part 5).

No Docker or Kubernetes runs here, so each test checks what the files promise against
the code: the files the Dockerfile copies exist and build a wheel whose console script
the image runs; every command compose and Helm start is a command of that script;
every GITOPS_* name they set is a setting the runner reads; the Helm chart renders
with Helm's own template engine (the Go SDK, through `helm-python-sdk`) into valid
manifests with probes, resources, a PodDisruptionBudget and the migration hook; and
the probe path answers on a real app.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.cli import cli
from runner.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
CHART = ROOT / "deploy" / "helm" / "gitops-runner"
GITOPS_NAME = re.compile(r"\bGITOPS_[A-Z0-9_]+\b")


# ---- the Dockerfile ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, rest = stripped.partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


def copied_from_context() -> list[str]:
    """Sources of every COPY that reads the build context (not another stage)."""
    sources = []
    for instruction, rest in dockerfile_instructions():
        if instruction == "COPY" and "--from=" not in rest:
            *paths, _destination = shlex.split(rest)
            sources.extend(paths)
    return sources


def test_every_file_the_dockerfile_copies_exists() -> None:
    sources = copied_from_context()

    assert {"pyproject.toml", "README.md", "runner", "policies"} <= set(sources)
    assert [source for source in sources if not (ROOT / source).exists()] == []


def test_the_image_is_multi_stage_slim_non_root_with_git_health_check_and_labels() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for name, rest in instructions if name == "FROM"]
    args = " ".join(rest for name, rest in instructions if name in ("RUN", "LABEL", "HEALTHCHECK"))
    users = [rest for name, rest in instructions if name == "USER"]

    assert len(stages) == 2 and stages[0].endswith("AS build") and "slim" in stages[1]
    assert any("--from=build" in rest for name, rest in instructions if name == "COPY")
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "git" in args.split() and "/healthz" in args
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in args


def test_the_wheel_built_from_the_copied_files_has_the_entrypoint_and_migrations(
    tmp_path: Path,
) -> None:
    """The build stage's input alone (what COPY brings) builds a wheel with the console
    script the ENTRYPOINT names, and the migrations `db upgrade` runs in the image."""
    context = tmp_path / "context"
    context.mkdir()
    for source in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / source, context / source)
    caches = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "runner", context / "runner", ignore=caches)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(wheels), str(context)], check=True, timeout=300)
    [wheel] = wheels.glob("gitops_runner-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()

    entrypoint = [rest for name, rest in dockerfile_instructions() if name == "ENTRYPOINT"]
    assert entrypoint == ['["gitops-runner"]']
    assert re.search(r"^gitops-runner = runner\.cli_server\.client:main$", scripts, re.MULTILINE)
    assert "runner/store/migrations/env.py" in names
    assert any(re.fullmatch(r"runner/store/migrations/versions/0001_\w+\.py", n) for n in names)
    assert "runner/results/templates" in " ".join(names)  # package data ships too


# ---- commands and settings named by compose and Helm --------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def assert_is_a_command(argv: list[str]) -> None:
    """`argv` (after the `gitops-runner` entrypoint) names a real command of the CLI."""
    command: Any = cli
    for word in argv:
        if word.startswith("-"):
            break
        assert word in command.commands, f"gitops-runner has no command {argv}"
        command = command.commands[word]


def test_compose_runs_the_scaled_out_setup_with_a_migration_step() -> None:
    services = compose()["services"]

    assert {"postgres", "redis", "minio", "minio-bucket", "migrate", "web", "worker"} <= set(
        services
    )
    assert services["web"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("web", "worker"):
        waits_for = services[name]["depends_on"]
        assert waits_for["migrate"]["condition"] == "service_completed_successfully"
        assert waits_for["minio-bucket"]["condition"] == "service_completed_successfully"
    for name in ("migrate", "web", "worker"):
        assert_is_a_command(services[name]["command"])
        env = services[name]["environment"]
        assert env["GITOPS_AUTO_MIGRATE"] == "false"  # only `migrate` changes the schema
        assert env["GITOPS_QUEUE"] == "rq" and env["GITOPS_PLAN_STORE"].startswith("s3://")
    assert "gitops-plans" in " ".join(services["minio-bucket"]["command"])


def settings_names() -> set[str]:
    return {f"GITOPS_{name.upper()}" for name in Settings.model_fields}


def names_the_runner_reads() -> set[str]:
    """Settings, plus the few variables read directly (`GITOPS_CONFIG_FILE`)."""
    source = " ".join(path.read_text() for path in (ROOT / "runner").rglob("*.py"))
    literal = set(GITOPS_NAME.findall(source)) - {"GITOPS_"}
    return settings_names() | {name for name in literal if f'"{name}"' in source}


def deployment_files() -> Iterator[Path]:
    yield COMPOSE
    yield from sorted(path for path in CHART.rglob("*") if path.is_file())


def test_every_gitops_name_in_compose_and_helm_is_a_setting() -> None:
    known = names_the_runner_reads()
    used = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in deployment_files()
        for name in GITOPS_NAME.findall(path.read_text())
    }

    assert used, "the deployment files set no GITOPS_* name at all"
    assert sorted((where, name) for where, name in used if name not in known) == []


def test_the_settings_compose_gives_are_accepted_by_the_runner() -> None:
    """Not only the names: compose's values parse as settings (types, choices)."""
    for name in ("web", "worker", "migrate"):
        env = compose()["services"][name]["environment"]
        values = {
            key.removeprefix("GITOPS_").lower(): value
            for key, value in env.items()
            if key.startswith("GITOPS_") and "${" not in str(value)
        }
        Settings(**values)


# ---- the Helm chart, rendered by Helm ---------------------------------------------------------

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    try:
        rendered = chart.render(values or {}, name="runner", namespace="infra")
    finally:
        chart.close()
    documents = []
    for name, text in rendered.items():
        if name.endswith(".yaml"):
            documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document["spec"]["template"]["spec"]["containers"]


def test_the_chart_passes_helm_lint() -> None:
    report = helm.lint(str(CHART))

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []  # info only


def test_the_chart_renders_web_and_worker_with_probes_resources_and_secrets() -> None:
    documents = render({"ingress": {"enabled": True}})
    deployments = {doc["metadata"]["name"]: doc for doc in of_kind(documents, "Deployment")}

    assert set(deployments) == {"runner-gitops-runner-web", "runner-gitops-runner-worker"}
    web = containers(deployments["runner-gitops-runner-web"])[0]
    worker = containers(deployments["runner-gitops-runner-worker"])[0]
    assert web["args"] == ["serve"] and worker["args"][0] == "worker"
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "livenessProbe" in web
    for container in (web, worker):
        assert container["resources"]["requests"]["cpu"]
        assert container["envFrom"] == [{"secretRef": {"name": "gitops-runner"}}]
        assert {"name": "GITOPS_AUTO_MIGRATE", "value": "false"} in container["env"]
    for deployment in deployments.values():
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    [service] = of_kind(documents, "Service")
    [ingress] = of_kind(documents, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "web"
    budgets = of_kind(documents, "PodDisruptionBudget")
    assert sorted(
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for b in budgets
    ) == [
        "web",
        "worker",
    ]


def test_the_chart_migrates_in_a_hook_job_before_the_replicas_start() -> None:
    [job] = of_kind(render(), "Job")

    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert {"pre-install", "pre-upgrade"} <= set(hooks)
    [container] = containers(job)
    assert container["args"] == ["db", "upgrade"]
    assert_is_a_command(container["args"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_values_can_turn_parts_off() -> None:
    documents = render(
        {
            "migrations": {"enabled": False},
            "web": {"podDisruptionBudget": {"enabled": False}},
            "worker": {"replicas": 5, "args": ["--burst"]},
        }
    )

    assert of_kind(documents, "Job") == [] and of_kind(documents, "Ingress") == []
    [budget] = of_kind(documents, "PodDisruptionBudget")
    assert budget["metadata"]["name"].endswith("-worker")
    [worker] = [d for d in of_kind(documents, "Deployment") if "worker" in d["metadata"]["name"]]
    assert worker["spec"]["replicas"] == 5 and containers(worker)[0]["args"] == [
        "worker",
        "--burst",
    ]
    assert_is_a_command(containers(worker)[0]["args"])


def test_every_env_name_the_rendered_chart_sets_is_read_by_the_runner() -> None:
    known = names_the_runner_reads() | {"WEB_CONCURRENCY"}
    names = {
        entry["name"]
        for doc in render()
        if doc["kind"] in ("Deployment", "Job")
        for container in containers(doc)
        for entry in container.get("env", [])
    }

    assert "GITOPS_PLAN_STORE" in names
    assert sorted(names - known) == []


# ---- the probe path ----------------------------------------------------------------------------


def test_the_health_check_path_answers_on_a_real_app(tmp_path: Path) -> None:
    from runner.settings import load_settings
    from runner.web.app import create_app
    from runner.wiring import build_web_services

    settings = load_settings(data_dir=tmp_path, insecure_no_webhook_secret=True)
    app = create_app(settings, build_web_services(settings))

    response = app.test_client().get("/healthz")

    assert response.status_code == 200
