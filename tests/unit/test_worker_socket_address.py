"""The subscriber's worker socket on an install root too deep for a socket file's path.

A Unix socket path longer than ``sockaddr_un`` (108 bytes) cannot be bound: the subscriber
used to fail to start ("AF_UNIX path too long") when the install root was nested deep enough.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path
from multiprocessing.connection import AuthenticationError, Client, Listener

import pytest

from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.layout import Layout


def _round_trip(addr: str, key: bytes, client_key: bytes) -> object:
    got = {}

    def serve(listener):
        try:
            with listener.accept() as conn:
                got["frame"] = conn.recv_bytes()
        except (AuthenticationError, OSError, EOFError) as e:
            got["error"] = e

    listener = Listener(addr, family="AF_UNIX", authkey=key)
    t = threading.Thread(target=serve, args=(listener,), daemon=True)
    t.start()
    try:
        with Client(addr, family="AF_UNIX", authkey=client_key) as conn:
            conn.send_bytes(b"hello")
    except (AuthenticationError, OSError, EOFError) as e:
        got.setdefault("error", e)
    t.join(5)
    listener.close()
    return got


def test_a_short_run_dir_keeps_the_socket_file():
    # a root of its own: pytest's tmp_path may itself be too deep (under xdist it is)
    with tempfile.TemporaryDirectory(prefix="ew") as short:
        layout = Layout(Path(short) / "home")
        addr = worker_socket.address(layout, "a")
        assert addr == str(layout.run_dir / "subscriber@a.sock")
        assert not worker_socket.is_abstract(addr)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_a_run_dir_too_deep_for_a_socket_file_gets_an_abstract_address_that_works(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5) / "home"
    layout = Layout(deep)
    layout.run_dir.mkdir(parents=True)
    assert len(os.fsencode(worker_socket.socket_path(layout, "vm"))) > 108
    addr = worker_socket.address(layout, "vm")
    assert worker_socket.is_abstract(addr) and len(addr.encode()) <= 107
    # the same install and name give the same address; another install another one
    assert worker_socket.address(Layout(deep), "vm") == addr
    assert worker_socket.address(Layout(deep.parent / "other"), "vm") != addr
    assert worker_socket.address(layout, "vm2") != addr

    key = os.urandom(32)
    assert _round_trip(addr, key, key) == {"frame": b"hello"}
    # without the key nobody gets in: the authkey is all an abstract socket has
    assert "error" in _round_trip(addr, key, os.urandom(32))
