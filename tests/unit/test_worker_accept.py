"""The subscriber's worker socket (daemons/subscriber/pool.py, ``_accept_loop``): a worker that
hangs up in the middle of the handshake (killed while it connected) must not end the accept
loop: seen in the supervision test, where every worker after such a one started and never got
in, and the jobs stayed queued."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from multiprocessing.connection import Client, Listener

import pytest

from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.daemons.subscriber.pool import WorkerPool

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def accepting(tmp_path):
    """The pool's accept loop alone, on a listener of its own; the pool's other parts unused."""
    address, key = str(tmp_path / "w.sock"), b"k" * 32
    pool = WorkerPool.__new__(WorkerPool)
    pool._listener = Listener(address, family="AF_UNIX", authkey=key)
    pool._accepting, pool._arrivals = True, deque()
    woken = threading.Event()
    pool._wake = woken.set
    loop = threading.Thread(target=pool._accept_loop, daemon=True)
    loop.start()
    yield pool, address, key, woken, loop
    pool._accepting = False
    pool._listener.close()


def _hang_up_mid_handshake(address: str) -> None:
    """Connect, leave the listener's challenge unread, and go away: its read of the answer
    then fails with ECONNRESET, as when a connecting worker is killed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(address)
    time.sleep(0.2)          # the challenge is sent, and not read
    s.close()


def test_a_worker_that_hangs_up_while_connecting_does_not_keep_the_next_ones_out(accepting):
    pool, address, key, woken, loop = accepting
    # Given two workers killed in the middle of the handshake
    for _ in range(2):
        _hang_up_mid_handshake(address)
    time.sleep(0.2)
    # Then the accept loop still runs
    assert loop.is_alive()
    # and the next worker gets in: its hello reaches the pool
    with Client(address, family="AF_UNIX", authkey=key) as conn:
        conn.send_bytes(worker_socket.pack({"t": "hello", "name": "w1"}))
        assert woken.wait(10)
        hello, _conn = pool._arrivals.popleft()
        assert hello["name"] == "w1"
