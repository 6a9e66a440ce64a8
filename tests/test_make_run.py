"""`make run` as a person would use it: start, paste the printed command, Ctrl-C, nothing left."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import psutil
import pytest

from cds_service.redis_server import free_port

from support import CDS_EXAMPLES, SHARED_MISSING

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CDS_EXAMPLES.is_dir(), reason=SHARED_MISSING),
]

ROOT = Path(__file__).resolve().parents[1]


class _Lines:
    """Lines of a child's output, read by a thread (select() on a buffered pipe misses lines)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.text[-3000:]}")

    def rest(self, timeout_s: float) -> str:
        self._thread.join(timeout=timeout_s)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.seen)


def _tree(pid: int) -> set[int]:
    root = psutil.Process(pid)
    return {root.pid, *(child.pid for child in root.children(recursive=True))}


def test_make_run_serves_the_example_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CDS_") and key != "REDIS_URL"
    }
    env["CDS_PORT"] = str(port)
    process = subprocess.Popen(
        ["make", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    pids: set[int] = set()
    lines = _Lines(process)
    try:
        fire = lines.until(r"^FIRE: ", timeout_s=240)
        assert f"http://127.0.0.1:{port}/cds-services" in lines.text
        assert "DEVELOPMENT MODE" in lines.text
        pids = _tree(process.pid)
        names = {psutil.Process(pid).name() for pid in pids if psutil.pid_exists(pid)}
        assert any("redis-server" in name for name in names), names
        assert len(pids) >= 5  # make, supervisor, redis-server, worker + its pool child, API

        command = fire.removeprefix("FIRE: ").strip()
        fired = subprocess.run(
            ["bash", "-c", command],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fired.returncode == 0, fired.stdout + fired.stderr
        assert fired.stdout.strip() == '{"cards":[]}'
    finally:
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = lines.rest(timeout_s=10)
    assert process.stdout is not None
    process.stdout.close()
    assert "Stopped." in output
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [
            pid
            for pid in pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            break
        time.sleep(0.2)
    assert alive == [], f"processes left behind: {alive}"
