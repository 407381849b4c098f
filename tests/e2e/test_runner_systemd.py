"""The runner under a Type=notify unit: READY=1 once the service is ready, STOPPING=1 at the stop
signal, and no notification socket for the processes the daemon starts. The test binds the
socket systemd would (``$NOTIFY_SOCKET``) and runs the stand-in daemon in the foreground, as the
unit's ExecStart runs ``<daemon> run``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_runner import REPO, env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(40)]


def test_run_tells_systemd_ready_then_stopping(tmp_path):
    # Given the socket systemd would listen on, and a daemon run in the foreground that starts a child
    home = tmp_path / "home"
    home.mkdir()
    notify_path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(15)
    child_file = home / "child.pid"
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.dummy_daemon", "run", "--home", str(home),
                             "--spawn-child", str(child_file)],
                            env=env(NOTIFY_SOCKET=str(notify_path)), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Then it says READY=1 once the service called ready()
        assert sock.recv(4096) == b"READY=1"
        # and the child it started cannot speak for the unit
        assert wait_for(lambda: child_file.exists() and child_file.read_text())
        child_env = Path(f"/proc/{int(child_file.read_text())}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith(b"NOTIFY_SOCKET=") for v in child_env)
        # When systemd sends SIGTERM, it says STOPPING=1 and stops cleanly
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=15) == 0
    finally:
        sock.close()
        proc.kill()
        proc.wait()
        if child_file.exists():
            try:
                os.kill(int(child_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
