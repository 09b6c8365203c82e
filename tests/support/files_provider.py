"""A tiny Terraform provider managing local files, for tests that need a real provider.

`files_file { path, content }` writes `content` to `path` and, on refresh, reads the
real file back, so an edit made outside Terraform shows up as drift. Written with
the PyPI package `tf`; Terraform finds it through a filesystem mirror laid out by
`install_files_provider`, so no network and no registry are needed.

Terraform configuration using it:

    terraform {
      required_providers {
        files = { source = "example.test/local/files" }
      }
    }
    resource "files_file" "f" {
      path    = "${path.module}/out.txt"
      content = "hello"
    }

Running this file as a script starts the provider (Terraform does that).
"""

from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

from tf import schema, types
from tf.iface import (
    Config,
    CreateContext,
    DataSource,
    DeleteContext,
    Provider,
    ReadContext,
    Resource,
    State,
    UpdateContext,
    UpgradeContext,
)
from tf.utils import Diagnostics

HOSTNAME = "example.test"
NAMESPACE = "local"
TYPE = "files"
VERSION = "0.1.0"
SOURCE = f"{HOSTNAME}/{NAMESPACE}/{TYPE}"
PLATFORM = "linux_amd64"
EXECUTABLE = f"terraform-provider-{TYPE}_v{VERSION}"

REQUIRED_PROVIDERS_TF = f"""terraform {{
  required_providers {{
    {TYPE} = {{ source = "{SOURCE}" }}
  }}
}}
"""


class FilesProvider(Provider):
    """The provider: no configuration, one resource type."""

    def __init__(self) -> None:
        pass

    def full_name(self) -> str:
        return SOURCE

    def get_model_prefix(self) -> str:
        return f"{TYPE}_"

    def get_provider_schema(self, diags: Diagnostics) -> schema.Schema:
        return schema.Schema(attributes=[])

    def validate_config(self, diags: Diagnostics, config: Config) -> None:
        pass

    def configure_provider(self, diags: Diagnostics, config: Config) -> None:
        pass

    def get_data_sources(self) -> list[type[DataSource]]:
        return []

    def get_resources(self) -> list[type[Resource]]:
        return [FileResource]


class FileResource(Resource):
    """`files_file`: one local file; a relative path is relative to Terraform's working dir."""

    def __init__(self, provider: FilesProvider) -> None:
        self.provider = provider

    @classmethod
    def get_name(cls) -> str:
        return "file"

    @classmethod
    def get_schema(cls) -> schema.Schema:
        return schema.Schema(
            attributes=[
                schema.Attribute("path", types.String(), required=True, requires_replace=True),
                schema.Attribute("content", types.String(), required=True),
            ]
        )

    def create(self, ctx: CreateContext, planned: State) -> State:
        _write(planned["path"], planned["content"])
        return planned

    def read(self, ctx: ReadContext, current: State) -> State | None:
        path = Path(current["path"])
        if not path.is_file():
            return None  # gone: Terraform plans to create it again
        return {"path": current["path"], "content": path.read_text()}

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State:
        _write(planned["path"], planned["content"])
        return planned

    def delete(self, ctx: DeleteContext, current: State) -> None:
        Path(current["path"]).unlink(missing_ok=True)

    def upgrade(self, ctx: UpgradeContext, version: int, old: State) -> State:
        # The schema never changed; the base class would warn on every refresh.
        return old


def _write(path: str, content: Any) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)


def install_files_provider(root: Path, *, packed: bool = False) -> Path:
    """Lay the provider out as a filesystem mirror under `root`; return a CLI config using it.

    The mirror holds an executable wrapper that starts this file with the test's own
    Python (sys.executable), so the `tf` package of the venv is used. Point
    TF_CLI_CONFIG_FILE at the returned file. (`dev_overrides` alone is not enough:
    `terraform init` would still try to reach the registry.)

    Unpacked (default), `terraform init` links the plugin cache entry to the mirror;
    `packed=True` stores a zip archive instead, which init extracts into the plugin
    cache: the case where concurrent inits can corrupt a shared cache.
    """
    mirror = root / "mirror"
    wrapper = (
        # A shell wrapper rather than a shebang: a venv path can exceed the kernel's
        # shebang length limit. `exec` keeps the pid Terraform started.
        f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n'
    )
    if packed:
        _write_packed(mirror, wrapper)
    else:
        _write_unpacked(mirror, wrapper)
    cli_config = root / "files-provider.tfrc"
    cli_config.write_text(
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f'    path    = "{mirror.resolve()}"\n'
        f'    include = ["{HOSTNAME}/*/*"]\n'
        "  }\n"
        "  direct {\n"
        f'    exclude = ["{HOSTNAME}/*/*"]\n'
        "  }\n"
        "}\n"
    )
    return cli_config


def _write_unpacked(mirror: Path, wrapper: str) -> None:
    package_dir = mirror / HOSTNAME / NAMESPACE / TYPE / VERSION / PLATFORM
    package_dir.mkdir(parents=True, exist_ok=True)
    executable = package_dir / EXECUTABLE
    executable.write_text(wrapper)
    executable.chmod(0o755)


def _write_packed(mirror: Path, wrapper: str) -> None:
    type_dir = mirror / HOSTNAME / NAMESPACE / TYPE
    type_dir.mkdir(parents=True, exist_ok=True)
    member = zipfile.ZipInfo(EXECUTABLE)
    member.external_attr = (stat.S_IFREG | 0o755) << 16  # Terraform keeps the mode
    archive = type_dir / f"terraform-provider-{TYPE}_{VERSION}_{PLATFORM}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(member, wrapper)


def main() -> None:
    """Serve the provider over go-plugin's gRPC handshake (called by Terraform)."""
    # Imported here: grpc and cryptography are only needed when serving.
    from tf.runner import run_provider

    run_provider(FilesProvider(), sys.argv)


if __name__ == "__main__":
    main()
