"""Drift detection: scan the default branch, classify, store, report, correct safely.

See docs/drift.md. `DriftService` is the entry point for the CLI, the web API and
the scheduler.
"""
