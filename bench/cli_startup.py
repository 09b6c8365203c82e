"""Start-up time of the `gitops-runner` command: what every invocation pays before it works.

Runs the installed console script (the one `pip install -e .` puts beside the
interpreter; `python -m runner` otherwise) N times for `--help`, `version`,
`--version` and an argument error, each in a fresh process with a temporary data
dir, and reports the median and the worst run. The issue's target: under 0.25 s.
`python -X importtime -c "import runner.cli"` shows where the time goes.

    .venv/bin/python bench/cli_startup.py            # 20 runs per command
    .venv/bin/python bench/cli_startup.py --smoke    # 3 runs per command (CI)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.25
COMMANDS = {
    "--help": ["--help"],
    "version": ["version"],
    "--version": ["--version"],
    "argument error": ["plan", "--no-such-option"],
}


def command_line() -> list[str]:
    """The console script if installed next to this interpreter, else `python -m runner`."""
    script = Path(sys.executable).with_name("gitops-runner")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner"]


def time_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="3 runs per command (CI)")
    args = parser.parse_args()
    runs = 3 if args.smoke else args.runs
    base = command_line()
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as run_dir:
        env = {**os.environ, "GITOPS_DATA_DIR": data_dir, "XDG_RUNTIME_DIR": run_dir}
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"{' '.join(base)}: {runs} runs per command (target < {TARGET_S} s), load {load}")
        worst = 0.0
        for mode in ("cold", "served"):
            # cold: GITOPS_CLI_SERVER=false; served: a CLI server (runner/cli_server) that
            # an untimed first command started. `--help` and `--version` always run cold.
            mode_env = env | {"GITOPS_CLI_SERVER": "true" if mode == "served" else "false"}
            if mode == "served":
                start_server([*base, "version"], mode_env, Path(run_dir))
            for name, extra in COMMANDS.items():
                times = [time_once([*base, *extra], mode_env) for _ in range(runs)]
                worst = max(worst, statistics.median(times))
                median, slowest = statistics.median(times), max(times)
                print(f"  {mode:6} {name:15} median {median:.3f} s  max {slowest:.3f} s")
    print(f"slowest median {worst:.3f} s: {'within' if worst < TARGET_S else 'OVER'} the target")
    return 0


def start_server(argv: list[str], env: dict[str, str], run_dir: Path) -> None:
    """Run one command that starts a CLI server, and wait until it listens."""
    subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
    deadline = time.monotonic() + 60
    while not list(run_dir.glob("gitops-runner/*.sock")):
        if time.monotonic() > deadline:
            raise SystemExit("no CLI server started (see the .log beside its socket)")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
