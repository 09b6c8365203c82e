"""A real repository of files-provider projects, applied once, for drift tests.

Each project manages one file under `world/`; its state lives under `state/`, outside
any checkout, as a remote backend would. Editing a file under `world/` is drift.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from runner.drift.scan import DriftRepo
from runner.drift.service import DriftService
from runner.engine.planner import Planner
from runner.notify.base import Notifier, NullNotifier
from runner.settings import Settings
from runner.store.store import Store
from runner.terraform import Terraform, locate_terraform
from runner.wiring import build_services
from tests.support.files_provider import REQUIRED_PROVIDERS_TF, install_files_provider
from tests.support.git_repo import GitRepo


def project_tf(state: Path, world: Path, name: str, content: str) -> str:
    return (
        REQUIRED_PROVIDERS_TF
        + f'terraform {{\n  backend "local" {{ path = "{state}/{name}.tfstate" }}\n}}\n'
        + f'resource "files_file" "f" {{\n  path    = "{world}/{name}.txt"\n'
        + f'  content = "{content}"\n}}\n'
    )


@dataclass
class World:
    root: Path
    repo: GitRepo
    state: Path
    world: Path
    settings: Settings
    store: Store

    def file(self, name: str) -> Path:
        return self.world / f"{name}.txt"

    def drift_repo(self, **kwargs: object) -> DriftRepo:
        return DriftRepo.from_url(str(self.repo.path), **kwargs)  # type: ignore[arg-type]

    def write_project(self, name: str, content: str) -> None:
        self.repo.write({f"{name}/main.tf": project_tf(self.state, self.world, name, content)})

    def apply_all(self, names: list[str]) -> None:
        """Bring the world in line with the working tree, as a past apply would have."""
        terraform = Terraform(
            locate_terraform(self.settings.terraform_bin),
            self.settings.plugin_cache_dir,
            self.settings.data_dir,
        )
        for name in names:
            workdir = self.repo.path / name
            assert terraform.init(workdir).ok
            outcome = terraform.plan(workdir, Path("setup.tfplan"))
            assert outcome.exit_code in (0, 2), outcome.stderr_tail()
            assert terraform.apply(workdir, Path("setup.tfplan")).ok

    def service(
        self,
        notifier: Notifier | None = None,
        *,
        planner: Planner | None = None,
        **kwargs: object,
    ) -> DriftService:
        """The drift service on the services `serve` builds (with another planner if given)."""
        services = build_services(self.settings, self.store)
        if planner is not None:
            services = replace(services, planner=planner)
        return DriftService(
            services,
            notifier=notifier or NullNotifier(),
            **kwargs,  # type: ignore[arg-type]
        )


RUNNER_YAML = """version: 1
projects:
{projects}
"""


def make_world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    projects: dict[str, str],
    drift_options: dict[str, str] | None = None,
    **settings: object,
) -> World:
    """Create, commit and apply `projects` (name → file content)."""
    cli_config = install_files_provider(tmp_path / "provider")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(cli_config))
    state, world = tmp_path / "state", tmp_path / "world"
    state.mkdir()
    world.mkdir()
    repo = GitRepo.init(tmp_path / "repo")
    repo.write({".gitignore": ".terraform/\n*.tfplan\n.terraform.lock.hcl\n"})
    lines = []
    for name in projects:
        lines.append(f"  - name: {name}\n    dir: {name}")
        options = (drift_options or {}).get(name)
        if options:
            lines.append(f"    drift: {options}")
    repo.write({"gitops-runner.yaml": RUNNER_YAML.format(projects="\n".join(lines))})
    data = tmp_path / "data"
    values: dict[str, object] = {"data_dir": data, "parallelism": 2} | settings
    built = Settings(**values)  # type: ignore[arg-type]
    store = Store.open(built.resolved_database_url)
    w = World(tmp_path, repo, state, world, built, store)
    for name, content in projects.items():
        w.write_project(name, content)
    repo.commit("projects")
    w.apply_all(list(projects))
    return w
