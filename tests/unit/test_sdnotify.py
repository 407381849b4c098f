"""sd_notify by hand: datagrams a real unix socket bound by the test receives."""

from __future__ import annotations

import socket
import uuid

import pytest

from enstratus_workers.runtime import sdnotify
from enstratus_workers.runtime.sdnotify import SystemdNotifier


@pytest.fixture
def path_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_ready_reaches_a_socket_named_by_its_path(path_socket):
    name, sock = path_socket
    assert SystemdNotifier(name).notify("READY=1", "STATUS=serving") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_an_at_sign_names_an_abstract_socket():
    name = f"@enstratus-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name[1:].encode())
        sock.settimeout(5)
        assert SystemdNotifier(name).notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_the_socket_is_taken_out_of_the_environment_once(path_socket):
    name, _ = path_socket
    env = {"NOTIFY_SOCKET": name, "OTHER": "x"}
    assert SystemdNotifier.from_environment(env).name == name
    # the processes this daemon starts do not inherit it
    assert env == {"OTHER": "x"}
    assert SystemdNotifier.from_environment(env).name is None


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path, caplog):
    assert SystemdNotifier.from_environment({}).notify("READY=1") is False
    assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": ""}).notify("READY=1") is False
    # a socket that went away, or an address of a kind this code does not speak: logged, not raised
    assert SystemdNotifier(str(tmp_path / "gone")).notify("READY=1") is False
    assert SystemdNotifier("vsock:2:1234").notify("READY=1") is False
    assert "could not notify systemd (READY=1)" in caplog.text
    with pytest.raises(ValueError, match="neither a socket path nor an abstract name"):
        sdnotify.socket_address("relative/path")
