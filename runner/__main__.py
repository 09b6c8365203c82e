"""`python -m runner` is the `gitops-runner` command."""

from runner.cli import main

main()
