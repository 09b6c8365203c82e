"""Server settings: read once at start-up and passed down, never looked up globally.

Sources, highest priority first: environment variables prefixed `GITOPS_`, then
the YAML file given with `--config`, then the defaults below. Lists accept a
comma-separated string in the environment (`GITOPS_REPO_ALLOWLIST=a/*,b/*`) and a
YAML list in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CommaList = Annotated[tuple[str, ...], NoDecode]


class PolledRepo(BaseSettings):
    """A repository the pull-mode reconciler fetches on an interval (no webhooks)."""

    model_config = SettingsConfigDict(extra="forbid")

    url: str
    # Set: the server reconciles the repository (pull mode) every this many seconds.
    # Unset: it is only scanned for drift (e.g. a repository applied on merge by webhooks).
    poll_interval: int | None = Field(default=None, ge=5, description="seconds between polls")
    branch: str | None = None
    # "owner/name" on the forge, for drift issues and commit statuses when the URL
    # does not tell (a mirror, a file:// URL); forge defaults to github.
    full_name: str | None = None
    # `runner.events.model.ForgeKind`, spelled out: settings is the bottom layer and
    # imports nothing of the runner (tests/test_drift_scan.py checks the two agree).
    forge: Literal["github", "gitlab"] | None = None


class PolicySetSettings(BaseSettings):
    """A directory of Rego policies the server checks plans against (docs/policies.md)."""

    model_config = SettingsConfigDict(extra="forbid")

    name: str
    path: Path
    # Users whose `gitops approve_policies` counts when this set fails.
    owners: tuple[str, ...] = ()
    # How many distinct owners must approve; 0: a failure can never be overridden.
    approvals_needed: int = Field(default=1, ge=0)
    # True: every project is checked; False: only projects whose default-branch config
    # names the set in `policy_sets:`.
    required: bool = True


class Settings(BaseSettings):
    """Everything the server and CLI need to know about their environment."""

    model_config = SettingsConfigDict(env_prefix="GITOPS_", extra="forbid")

    data_dir: Path = Path("~/.gitops-runner")
    host: str = "0.0.0.0"
    port: int = 4141
    public_url: str = ""  # where people reach the dashboard; used for links in comments

    github_token: SecretStr | None = None
    # A GitHub App instead of a token (docs/forges.md): its id and private key (PEM),
    # given inline or as a file; each webhook names the installation to act as.
    github_app_id: int | None = Field(default=None, ge=1)
    github_app_key: SecretStr | None = None
    github_app_key_file: Path | None = None
    github_api_url: str = "https://api.github.com"
    github_webhook_secret: SecretStr | None = None
    # Per-project results as check runs (docs/forges.md#check-runs): "auto" = when acting
    # as a GitHub App (only Apps may write check runs); "off" = commit statuses.
    github_checks: Literal["auto", "on", "off"] = "auto"
    # The longest GitHub may make one request wait for its rate limit; longer fails at once.
    github_rate_limit_max_wait: float = Field(default=120.0, ge=0)
    gitlab_url: str = "https://gitlab.com"
    gitlab_token: SecretStr | None = None
    gitlab_webhook_secret: SecretStr | None = None
    insecure_no_webhook_secret: bool = False

    repo_allowlist: CommaList = ()
    allow_fork_prs: bool = False
    # Requirements every project must meet to apply, on top of the default branch's config.
    apply_requirements: Annotated[
        tuple[Literal["approved", "mergeable", "undiverged"], ...], NoDecode
    ] = ()
    # Branches whose merges apply (besides the repository's default branch).
    apply_branches: CommaList = ()
    # The server-side repo config, Atlantis's repos.yaml schema (config/server_config.py).
    repo_config: Path | None = None
    # `gitops import` and `gitops state rm` (off: they change state outside a plan).
    enable_state_commands: bool = False
    # A pull request touching more projects than this is refused, not planned.
    max_projects_per_pr: int = Field(default=50, ge=1)
    plan_drafts: bool = True
    max_body_bytes: int = 25 * 1024 * 1024  # GitHub's own cap on a webhook payload
    # Deliveries older than this are forgotten; forges stop redelivering within days.
    delivery_retention_days: int = Field(default=14, ge=1)
    # JSON plans kept for policy checks (they hold plan values) are deleted after this.
    plan_json_retention_days: int = Field(default=30, ge=1)
    # When set, every /api/ route needs `Authorization: Bearer <token>`; without it the
    # run-log route is refused, since logs hold plan output.
    api_token: SecretStr | None = None
    # Sign-in to the dashboard and API (docs/dashboard.md#sign-in, docs/security.md).
    # "off": only webhooks, /healthz and /metrics answer; everything else is 404.
    dashboard: Literal["on", "off"] = "on"
    # "none": nobody signs in and everyone may act; never on a reachable network.
    dashboard_auth: Literal["required", "none"] = "required"
    # Who may sign in: users and `group:NAME` entries; operators may also act.
    dashboard_viewers: CommaList = ()
    dashboard_operators: CommaList = ()
    # Signs session cookies; needed by every sign-in provider (and shared by all processes).
    session_secret: SecretStr | None = None
    session_hours: int = Field(default=12, ge=1)
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid email profile"
    oidc_username_claim: str = "email"
    oidc_groups_claim: str = "groups"
    github_oauth_client_id: str = ""
    github_oauth_client_secret: SecretStr | None = None
    gitlab_oauth_client_id: str = ""
    gitlab_oauth_client_secret: SecretStr | None = None
    # /metrics without signing in (a Prometheus on the same network); default: a token.
    metrics_public: bool = False
    log_format: Literal["text", "json"] = "text"
    # Terraform output kept per run (comment, result); the full masked log stays on disk.
    max_output_bytes: int = Field(default=1024 * 1024, ge=4096)
    # Comments one command may post; the last one summarises what was left out.
    max_comments_per_command: int = Field(default=10, ge=2)

    database_url: str | None = None
    # Migrate the schema when a process starts. Unset: yes on SQLite (one node, the quick
    # start), no elsewhere: PostgreSQL deployments run `gitops-runner db upgrade` as a step.
    auto_migrate: bool | None = None
    # Where plan files and finished run logs are kept: "" = the data dir (one machine),
    # `s3://bucket/prefix` = object storage shared by every worker (docs/operations.md).
    plan_store: str = ""
    s3_endpoint_url: str | None = None  # MinIO, moto, or an S3-compatible service
    s3_region: str | None = None
    # Server-side encryption of uploaded objects; a KMS key id only with aws:kms.
    s3_sse: Literal["", "AES256", "aws:kms"] = ""
    s3_kms_key_id: str | None = None
    # Objects of plans that can no longer be applied (closed PRs, superseded or applied
    # plans) and of finished runs' logs are deleted after this many days.
    plan_store_retention_days: int = Field(default=14, ge=0)
    queue: Literal["inprocess", "rq"] = "inprocess"
    redis_url: str = "redis://127.0.0.1:6379/0"
    workers: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1)
    # `serve` with the in-process queue: jobs run in one process of their own beside
    # gunicorn, off the GIL that answers webhooks (runner/jobs/job_process.py).
    job_process: bool = True
    # A job's lease: a dead worker's job is taken up again this long (plus half of it
    # for clock skew) after its last heartbeat; renewed four times per lease.
    job_lease_seconds: float = Field(default=60.0, ge=2)
    # RQ queues are named after it (`<name>`, `<name>-drift`, `<name>-reconcile`): two
    # deployments may share one Redis under different names.
    queue_name: str = Field(default="gitops-runner", pattern=r"^[A-Za-z0-9_.-]{1,100}$")

    terraform_bin: str | None = None
    terraform_timeout: int = Field(default=3600, ge=1, description="seconds per Terraform step")
    # Names or globs (AWS_*) Terraform may see besides its fixed allowlist; never GITOPS_*.
    terraform_env_passthrough: CommaList = ()
    # GOGC for Terraform and its providers; 100 is Go's default, 0 leaves it to Go
    # (docs/terraform.md, "Go runtime").
    terraform_gogc: int = Field(default=400, ge=0)
    # A ceiling: plans mostly wait on provider APIs, so more run at once than there are
    # cores, while the planner admits one per core when they compute (engine/scheduling.py).
    parallelism: int = Field(default_factory=lambda: max(8, 2 * (os.cpu_count() or 2)), ge=1)
    secret_env_vars: CommaList = ()
    # Initialised `.terraform` directories reused across worktrees for this many hours
    # (docs/terraform.md, "Init cache"); 0 turns the init cache off.
    init_cache_hours: float = Field(default=24.0, ge=0)

    slack_webhook_url: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"  # Web API base; tests point it at a fake

    drift_schedule: str = ""
    # Rego policy sets (a JSON list in GITOPS_POLICY_SETS); none: no policy checks.
    policy_sets: tuple[PolicySetSettings, ...] = ()
    policy_timeout: float = Field(default=10.0, gt=0, description="seconds per policy set")
    repos: tuple[PolledRepo, ...] = ()

    @field_validator(
        "repo_allowlist",
        "secret_env_vars",
        "terraform_env_passthrough",
        "apply_requirements",
        "apply_branches",
        "dashboard_viewers",
        "dashboard_operators",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def github_app_configured(self) -> bool:
        """Whether GitHub is reached as an App (installation tokens) rather than a token."""
        return self.github_app_id is not None

    def github_app_private_key(self) -> str:
        """The App's PEM key, inline or read from its file; `SettingsError` says which is wrong."""
        if self.github_app_key is not None and self.github_app_key.get_secret_value().strip():
            return self.github_app_key.get_secret_value()
        if self.github_app_key_file is None:
            raise SettingsError(
                "GITOPS_GITHUB_APP_ID is set: "
                "set GITOPS_GITHUB_APP_KEY_FILE or GITOPS_GITHUB_APP_KEY"
            )
        path = self.github_app_key_file.expanduser()
        try:
            return path.read_text()
        except OSError as error:
            raise SettingsError(
                f"GITOPS_GITHUB_APP_KEY_FILE {path}: cannot read it: {error.strerror}"
            ) from None

    @property
    def resolved_database_url(self) -> str:
        """The store URL: the configured one, or SQLite under the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'gitops-runner.db'}"

    @property
    def migrates_at_start(self) -> bool:
        """GITOPS_AUTO_MIGRATE, or by default: only on SQLite (see docs/operations.md)."""
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.resolved_database_url.startswith("sqlite")

    def secret_values(self) -> tuple[str, ...]:
        """Values never to show: the operator's secret env vars and the runner's own secrets."""
        values = [os.environ[name] for name in self.secret_env_vars if os.environ.get(name)]
        for secret in (
            self.github_token,
            self.github_app_key,
            self.gitlab_token,
            self.github_webhook_secret,
            self.gitlab_webhook_secret,
            self.slack_bot_token,
            self.slack_webhook_url,
            self.api_token,
            self.session_secret,
            self.oidc_client_secret,
            self.github_oauth_client_secret,
            self.gitlab_oauth_client_secret,
        ):
            if secret is not None and secret.get_secret_value():
                values.append(secret.get_secret_value())
        values.extend(self._app_key_file_contents())
        return tuple(values)

    def _app_key_file_contents(self) -> list[str]:
        """The App key read from its file: as secret as the inline one, and Terraform's
        code (a PR's) may read a file it can guess the path of. The masker hides each of
        its lines too. Unreadable: nothing to hide here (the forge names the error)."""
        if self.github_app_key_file is None:
            return []
        try:
            contents = self.github_app_key_file.expanduser().read_text()
        except (OSError, UnicodeDecodeError):
            return []
        return [contents] if contents.strip() else []

    def forge_hosts(self) -> dict[str, str]:
        """The web host of each forge's repositories: what its webhooks' `html_url` carry.

        Configured repositories (`repos:`) are keyed with it, so their locks are the
        ones the PR flow takes for the same repository.
        """
        github = (urlsplit(self.github_api_url).netloc or "").lower()
        gitlab = (urlsplit(self.gitlab_url).netloc or "").lower()
        return {"github": "github.com" if github == "api.github.com" else github, "gitlab": gitlab}

    @property
    def plugin_cache_dir(self) -> Path:
        return self.data_dir / "plugin-cache"

    @property
    def init_cache_dir(self) -> Path:
        return self.data_dir / "init-cache"

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over values passed in (the YAML file's), as promised.
        return (env_settings, init_settings)


class SettingsError(ValueError):
    """Settings that cannot be used, one line per problem, naming the variable or file key."""


def load_settings(config_file: str | Path | None = None, **values: Any) -> Settings:
    """Build the settings once. Priority: `GITOPS_*` env, then `values`, then the YAML file.

    Raises `SettingsError` (never pydantic's own text, with its documentation URLs).
    """
    path = Path(config_file) if config_file is not None else None
    from_file, key_lines = _read_settings_file(path) if path is not None else ({}, {})
    try:
        return Settings(**{**from_file, **values})
    except ValidationError as error:
        problems = [_problem(item, path, key_lines) for item in error.errors(include_url=False)]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def ensure_data_dir(settings: Settings) -> Path:
    """Create the data directory, or say in one line why it cannot be used."""
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SettingsError(
            f"GITOPS_DATA_DIR {data_dir}: cannot create it: {error.strerror}"
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise SettingsError(f"GITOPS_DATA_DIR {data_dir}: not writable")
    return data_dir


def _read_settings_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's mapping, and the line of each top-level key (for error messages)."""
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    text = path.read_text()
    try:
        loaded = yaml.safe_load(text) or {}
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise SettingsError(f"{where}: {problem}") from None
    if not isinstance(loaded, dict):
        raise SettingsError(f"{path}: the settings file must be a mapping of setting: value")
    lines = {
        str(key.value): key.start_mark.line + 1
        for key, _ in getattr(root, "value", ())
        if isinstance(key, yaml.ScalarNode)
    }
    return loaded, lines


def _problem(item: Any, path: Path | None, key_lines: dict[str, int]) -> str:
    """One validation error as `GITOPS_PORT='abc': <why>` or `file.yaml:3: port: <why>`."""
    field = str(item["loc"][0]) if item["loc"] else ""
    dotted = ".".join(str(part) for part in item["loc"])
    env_name = f"GITOPS_{field.upper()}"
    if field and env_name in os.environ:
        shown = "" if _is_secret(field) else f"={os.environ[env_name]!r}"
        return f"{env_name}{shown}: {item['msg']}"
    if path is not None and field in key_lines:
        return f"{path}:{key_lines[field]}: {dotted}: {item['msg']}"
    return f"{dotted or 'settings'}: {item['msg']}"


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is None or "Secret" in str(info.annotation)
