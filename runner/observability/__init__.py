"""Logs that machines read: ids of what is being done (contextvars) and the log format.

`log_context.py` carries the delivery, job, run and PR ids of the work in hand, so
every log line written while doing it names them; `logs.py` sets up logging for the
CLI and the servers, as text (default) or one JSON object per line
(GITOPS_LOG_FORMAT=json), with the runner's secrets masked either way.
"""
