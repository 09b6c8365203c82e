# gitops-runner: `docker build -t gitops-runner .`
#   docker run -p 4141:4141 -v gitops-data:/data \
#     -e GITOPS_GITHUB_TOKEN=... -e GITOPS_GITHUB_WEBHOOK_SECRET=... gitops-runner
# See docs/operations.md for the settings.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: working copies of the repositories; ca-certificates: HTTPS clones and forge APIs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Only what the package build needs, so unrelated changes keep the layer cache.
COPY pyproject.toml README.md /src/
COPY runner /src/runner
RUN pip install /src && rm -rf /src

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

CMD ["gitops-runner", "serve"]
