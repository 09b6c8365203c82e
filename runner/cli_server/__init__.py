"""A warm start for the `gitops-runner` command: client.py (the installed command),
server.py (imports once, forks per command) and protocol.py (what they share)."""
