"""When `terraform init` must hold the plugin-cache lock, and when it may run in parallel."""

from __future__ import annotations

from pathlib import Path

from runner.terraform.providers import init_may_write_plugin_cache

BUILTIN_ONLY = 'resource "terraform_data" "x" {\n  input = "a"\n}\n'
LOCK = """provider "registry.terraform.io/hashicorp/random" {
  version     = "3.6.0"
  constraints = "~> 3.6"
  hashes = [
    "h1:abc=",
  ]
}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_builtin_resources_and_local_modules_need_no_lock(tmp_path):
    write(tmp_path / "mod/main.tf", BUILTIN_ONLY)
    write(tmp_path / "root/main.tf", BUILTIN_ONLY + 'module "m" {\n  source = "../mod"\n}\n')

    assert init_may_write_plugin_cache(tmp_path / "root") is False


def test_a_provider_resource_in_a_local_module_takes_the_lock(tmp_path):
    write(tmp_path / "mod/main.tf", 'resource "aws_s3_bucket" "b" {}\n')
    write(tmp_path / "root/main.tf", 'module "m" {\n  source = "../mod"\n}\n')

    assert init_may_write_plugin_cache(tmp_path / "root") is True


def test_required_providers_or_remote_modules_take_the_lock(tmp_path):
    write(tmp_path / "a/main.tf", "terraform {\n  required_providers {}\n}\n")
    write(tmp_path / "b/main.tf", 'module "vpc" {\n  source = "terraform-aws-modules/vpc/aws"\n}\n')

    assert init_may_write_plugin_cache(tmp_path / "a") is True
    assert init_may_write_plugin_cache(tmp_path / "b") is True


def test_a_dependency_lock_file_always_takes_the_lock(tmp_path):
    # Even with the provider cached: a mirror install re-links the cache entry.
    root = tmp_path / "root"
    write(root / "main.tf", BUILTIN_ONLY)
    write(root / ".terraform.lock.hcl", LOCK)

    assert init_may_write_plugin_cache(root) is True
