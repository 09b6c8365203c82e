"""gunicorn configuration for running the web service with the plain gunicorn command.

    gunicorn -c deploy/gunicorn.conf.py 'runner.wiring:create_app_from_env()'

Settings come from the `GITOPS_*` environment (plus the YAML file named by
`GITOPS_CONFIG_FILE`); the values below are the ones `gitops-runner serve` uses, taken
from `runner.web.server.gunicorn_options` so the two never drift apart. Command-line
flags and GUNICORN_CMD_ARGS still override them.
"""

import os
import secrets

from runner.settings import load_settings
from runner.web import server as _server
from runner.web.auth.oidc import configured_provider_names

_settings = load_settings(os.environ.get("GITOPS_CONFIG_FILE") or None)
# create_app_from_env runs the in-process queue's job workers in every web process;
# with RQ the web processes only submit (sizes `workers`: runner/web/server.py).
_options = _server.gunicorn_options(_settings, web_runs_jobs=_settings.queue == "inprocess")

bind = _options["bind"]
workers = _options["workers"]
worker_class = _options["worker_class"]
threads = _options["threads"]
# Twice the threads: change both together (`--threads 16 --worker-connections 32`).
worker_connections = _options["worker_connections"]
if workers > 1 and _settings.session_secret is None and not configured_provider_names(_settings):
    # One session key for every process, made here in the master before the fork: a
    # key made in each would refuse the others' cookies (runner/web/auth/session.py).
    # With a sign-in provider start-up insists on GITOPS_SESSION_SECRET instead.
    raw_env = [f"GITOPS_SESSION_SECRET={secrets.token_urlsafe(32)}"]
preload_app = _options["preload_app"]  # keep False: each worker builds its own Store and queue
max_requests = _options["max_requests"]
timeout = _options["timeout"]
graceful_timeout = _options["graceful_timeout"]
keepalive = _options["keepalive"]
logconfig_dict = _options["logconfig_dict"]
# The access log off unless asked for (`--access-logfile -`), as with `serve`.
logger_class = _options["logger_class"]
proc_name = _options["proc_name"]
control_socket_disable = _options["control_socket_disable"]  # ignored by gunicorn < 25

# Start the job workers of each worker process once its app is loaded; stop them on exit.
post_worker_init = _server.post_worker_init
worker_exit = _server.worker_exit
