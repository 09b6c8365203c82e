"""Pull-mode reconcile: poll the default branch, apply what changed (see docs/reconcile.md).

`reconciler.Reconciler` is the entry point for the CLI (`gitops-runner reconcile`)
and the server; `snapshot` turns a plain directory into a repository to poll.
Nothing is imported here, so `runner.drift` can use `snapshot` without a cycle.
"""
