"""Real servers for the end-to-end tests: started as subprocesses, logged to files, always stopped."""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def port() -> int:
    """A free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    log: Path

    def output(self, last: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-last:]

    def wait_for(self, url: str, timeout: float) -> None:
        """Until url answers; fails with the server's output when it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited ({self.process.returncode}):\n{self.output()}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{self.output()}")

    def stop(self, timeout: float = 120) -> None:
        """Ctrl+C, as a user stops it; killed only if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def serve(tmp_path):
    """start(command, cwd, env) -> Server; every server started is stopped after the test."""
    servers: list[Server] = []

    def start(command: list, cwd: Path, env: dict | None = None) -> Server:
        log = tmp_path / f"server-{len(servers)}.log"
        with log.open("w") as sink:
            process = subprocess.Popen([str(part) for part in command], cwd=cwd, stdout=sink,
                                       stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV, **(env or {})})
        servers.append(Server(process, log))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
