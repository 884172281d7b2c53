"""What the suite starts dies with the pytest process that started it (tests/children.py): a run killed
part-way leaves no redis-server, relay or double running, re-parented to PID 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

# A pytest process of the suite in miniature: tests/conftest.py imported (as every one imports it first),
# a redis-server started by the suite's own launcher from the main thread, and a child started from a
# thread that then ends. It prints their pids, then waits to be killed.
HOLDER = """
import subprocess, sys, threading, time
from pathlib import Path

import tests.conftest
from tests.integration.redis_launch import Server

server = Server(Path(sys.argv[1]), [])
started = []
thread = threading.Thread(target=lambda: started.append(subprocess.Popen(["sleep", "300"])))
thread.start()
thread.join()
print(server.process.pid, started[0].pid, flush=True)
time.sleep(300)
"""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


def test_a_killed_pytest_process_takes_what_it_started_with_it(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", HOLDER, str(tmp_path / "redis")]
    pids: list[int] = []
    with subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            pids = [int(pid) for pid in holder.stdout.readline().split()]
            assert len(pids) == 2, f"the holder exited ({holder.wait(timeout=30)}) before starting both"
            time.sleep(0.3)
            assert running(pids[1]), "killed when the thread that started it ended"
            holder.kill()
            holder.wait(timeout=30)
            deadline = time.monotonic() + 15
            while (left := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not left, f"still running after the process that started them was killed: {left}"
        finally:
            holder.kill()
            for pid in pids:  # only these two, and only if an assertion above failed
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
