"""How `deploy/stack.sh` decides a service runs: from the process's state and its command line,
not from its pid file alone. After a SIGKILL the pid file stays and the pid lingers as a zombie
until reaped (on a machine whose init does not reap, for good), and `kill -0` still succeeds on
it: the stack once waited 60 s for a service it never restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK_SH = ROOT / "deploy" / "stack.sh"


def _state_of(service: str, stack: Path) -> str:
    out = subprocess.run(
        ["bash", str(STACK_SH), "status"],
        env={**os.environ, "CONFIDE_STACK_DIR": str(stack)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith(service + " "))
    return line.split()[1]


def _pretend_service(stack: Path, service: str) -> subprocess.Popen[bytes]:
    """A process whose command line names the service, as `python -m confide_<name>` does."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"confide_{service}"]
    )
    (stack / "run").mkdir(parents=True, exist_ok=True)
    (stack / "run" / f"{service}.pid").write_text(str(process.pid))
    return process


def test_a_killed_service_left_as_a_zombie_is_down_not_running(tmp_path: Path) -> None:
    process = _pretend_service(tmp_path, "identity")
    try:
        # Alive: "up" when something answers on its port (a running dev stack), else "starting".
        assert _state_of("identity", tmp_path) in {"up", "starting"}
        process.send_signal(signal.SIGKILL)
        # Not reaped yet: the pid is a zombie, and `kill -0` on it still succeeds.
        os.kill(process.pid, 0)
        assert _state_of("identity", tmp_path) == "down"
    finally:
        process.kill()
        process.wait()


def test_a_pid_file_naming_another_program_is_not_the_service(tmp_path: Path) -> None:
    # A pid reused by an unrelated process after a crash must not count as the service.
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "consent.pid").write_text(str(unrelated.pid))
        assert _state_of("consent", tmp_path) == "down"
    finally:
        unrelated.kill()
        unrelated.wait()
