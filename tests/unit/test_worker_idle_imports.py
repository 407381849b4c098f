"""A worker process loads the heavy libraries only when an action first needs them (issue 10).

A worker process is started as the subscriber starts it (``worker.main(["run", ...])``, the whole
start: settings, logs, registry, services) in a fresh interpreter, against a stand-in subscriber
socket in the same process. Once it said hello and ran a ``noop``, that interpreter's
``sys.modules`` is read: no SQLAlchemy (the settings' URL check, the analytics engine, the
persistence backends), no PyMySQL, no cryptography (the KM client's keyring), no requests (Riak),
no asyncio (the guest client's async ping, which only the pinger calls).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests import servicehome as sh

HEAVY = ("sqlalchemy", "pymysql", "cryptography", "requests", "libcloud", "fastapi", "starlette", "pika", "asyncio")

PROBE = r"""
import json, os, sys, threading
from multiprocessing.connection import Listener
from pathlib import Path

from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.jobs.values import Task
from enstratus_workers.layout import Layout

home, heavy = sys.argv[1], sys.argv[2].split(",")
layout = Layout(Path(home))
layout.run_dir.mkdir(parents=True, exist_ok=True)
key = os.urandom(32)
worker_socket.authkey_path(layout, "probe").write_bytes(key)
listener = Listener(worker_socket.address(layout, "probe"), family="AF_UNIX", authkey=key)


def subscriber():
    conn = listener.accept()
    hello = worker_socket.unpack(conn.recv_bytes())
    task = Task(1, "noop", {}, 1, 3, "default")
    conn.send_bytes(worker_socket.pack({"t": "run", "a": [task.to_frame()]}))
    done = worker_socket.unpack(conn.recv_bytes())
    loaded = sorted({m.split(".")[0] for m in list(sys.modules)} & set(heavy))
    print(json.dumps({"hello": hello["t"], "done": [o.status for o in worker_socket.outcomes(done)],
                      "loaded": loaded}), flush=True)
    conn.send_bytes(worker_socket.pack({"t": "stop"}))


threading.Thread(target=subscriber, daemon=True).start()
from enstratus_workers.daemons import worker

sys.exit(worker.main(["run", "--name", "default.1", "--type", "default", "--subscriber", "probe",
                      "--home", home]))
"""


def test_an_idle_worker_that_ran_a_noop_has_loaded_no_database_or_crypto_library(tmp_path):
    # Given a scratch install (SQLite, an ENCRYPTION_KEY, so the worker builds its KM client too)
    home = sh.make_home(tmp_path)
    # When a worker process starts, says hello and runs a noop
    proc = subprocess.run([sys.executable, "-c", PROBE, str(home), ",".join(HEAVY)], env=sh.env_for(home),
                          capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    seen = json.loads(lines[-1])
    assert (seen["hello"], seen["done"]) == ("hello", ["succeeded"])
    # Then none of the heavy libraries is in its sys.modules
    assert seen["loaded"] == []
