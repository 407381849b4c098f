"""The guest agent: its line protocol (PING, LOG), its log, and its process modes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from enstratus_workers.guest import client
from enstratus_workers.guest import protocol as p
from enstratus_workers.guest.agent import GuestAgent
from tests.servicehome import wait_until

HOST = "127.0.0.1"


def _converse(port: int, payload: bytes, expect_close: bool = False) -> bytes:
    """Send ``payload``, half-close, read everything the agent answers."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(payload)
        if not expect_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data



@pytest.fixture
def agent(tmp_path):
    with GuestAgent("srv-test-1", log_path=tmp_path / "agent.log", alive_interval=0.05) as a:
        yield a


def test_ping_answers_pong_with_the_server_id_and_a_growing_uptime(agent):
    first = client.ping(HOST, agent.port)
    time.sleep(0.05)
    second = client.ping(HOST, agent.port)

    assert first.server_id == second.server_id == "srv-test-1"
    assert 0 <= first.uptime_s < second.uptime_s


def test_log_serves_boot_lines_then_only_what_is_new(agent, tmp_path):
    # Given the agent has booted and written a few alive lines
    assert wait_until(lambda: b"alive" in (tmp_path / "agent.log").read_bytes())

    # When the log is read from 0, then again from where the first read ended
    first = client.fetch_log(HOST, agent.port, 0)
    end = first[-1].end
    assert wait_until(lambda: (tmp_path / "agent.log").stat().st_size > end)
    later = client.fetch_log(HOST, agent.port, end)

    # Then the first read starts with the boot lines and the second holds only newer lines
    text = b"".join(c.data for c in first).decode()
    assert "boot: agent srv-test-1 starting" in text and "boot: ready" in text
    assert first[0].start == 0 and all(c.data.endswith(b"\n") for c in first)
    assert later and later[0].start == end
    assert b"boot:" not in b"".join(c.data for c in later)
    assert b"alive uptime=" in later[0].data


def test_log_block_is_length_prefixed_and_a_read_past_the_end_starts_over(agent, tmp_path):
    assert wait_until(lambda: (tmp_path / "agent.log").stat().st_size > 0)
    answer = _converse(agent.port, b"LOG 99999999\n")
    header, _, body = answer.partition(b"\n")
    start, end, length = p.parse_log_header(header)

    assert start == 0 and end == length == len(body) > 0
    assert body.startswith(b"20")  # a timestamped line from the very beginning


def test_pipelined_requests_are_answered_in_order_and_unknown_ones_with_err(agent):
    answer = _converse(agent.port, b"PING\nHELLO\nLOG x\nPING\n")
    lines = answer.split(b"\n")

    assert lines[0].startswith(b"PONG srv-test-1 ")
    assert lines[1] == b"ERR unknown request"
    assert lines[2] == b"ERR unknown request"
    assert lines[3].startswith(b"PONG srv-test-1 ")


def test_an_over_long_request_line_is_refused_and_the_connection_closed(agent):
    answer = _converse(agent.port, b"P" * (p.MAX_REQUEST + 10), expect_close=True)
    assert answer == b"ERR request line too long\n"


def test_stop_closes_open_connections_and_the_port(tmp_path):
    agent = GuestAgent("srv-stop", log_path=tmp_path / "a.log").start()
    port = agent.port
    sock = socket.create_connection((HOST, port), timeout=5)
    try:
        sock.sendall(b"PING\n")
        assert sock.recv(100).startswith(b"PONG srv-stop")

        agent.stop()

        assert sock.recv(100) == b""  # the agent closed our connection
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        client.ping(HOST, port, timeout=2)
    assert "shutdown: agent stopping" in (tmp_path / "a.log").read_text()


def test_an_idle_connection_is_closed_by_the_agent():
    with GuestAgent("srv-idle", idle_timeout=0.2) as agent:
        with socket.create_connection((HOST, agent.port), timeout=5) as sock:
            started = time.monotonic()
            assert sock.recv(10) == b""
            assert time.monotonic() - started < 3


def test_without_a_log_file_log_answers_an_empty_block():
    with GuestAgent("srv-nolog") as agent:
        assert client.fetch_log(HOST, agent.port, 0) == []
        assert _converse(agent.port, b"LOG 0\n") == b"LOG 0 0 0\n"


def test_parsers_refuse_answers_that_break_the_protocol():
    with pytest.raises(p.ProtocolError):
        p.parse_pong(b"PONG only-two")
    with pytest.raises(p.ProtocolError):
        p.parse_pong(b"")
    with pytest.raises(p.ProtocolError):
        p.parse_log_header(b"LOG 0 10 5")  # end != start + length
    with pytest.raises(ValueError):
        p.check_server_id("has space")
    assert p.parse_pong(p.pong_line("a", 1.5)) == p.Pong("a", 1.5)


def test_the_agent_process_prints_its_port_serves_and_stops_on_sigterm(tmp_path):
    log = tmp_path / "proc.log"
    proc = subprocess.Popen([sys.executable, "-m", "enstratus_workers.guest.agent", "--port", "0",
                             "--server-id", "srv-proc", "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["pid"] == proc.pid

        assert client.ping(HOST, info["port"]).server_id == "srv-proc"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    text = log.read_text()
    assert "boot: ready" in text and text.rstrip().endswith("shutdown: agent stopping")


def test_the_multi_agent_process_serves_many_ports_and_stops_when_stdin_closes():
    proc = subprocess.Popen([sys.executable, "-m", "enstratus_workers.guest.multi", "--count", "20",
                             "--id-prefix", "m-", "--lifetime", "60"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        agents = info["agents"]
        assert len(agents) == 20 and len({port for _, port in agents}) == 20

        for server_id, port in agents:
            assert client.ping(HOST, port).server_id == server_id

        proc.stdin.close()  # the launcher went away
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    with pytest.raises(ConnectionRefusedError):
        client.ping(HOST, agents[0][1], timeout=2)


def test_a_client_that_stops_reading_is_cut_off_once_idle_not_kept_for_ever(tmp_path):
    import asyncio

    from enstratus_workers.guest.server import AgentHost, AgentIdentity, listen_socket

    log = tmp_path / "agent.log"
    log.write_bytes(b"x" * (p.MAX_LOG_CHUNK - 1) + b"\n")

    async def scenario() -> tuple[int, int]:
        host = AgentHost(idle_timeout=0.3)
        listener = listen_socket()
        port = listener.getsockname()[1]
        await host.serve(AgentIdentity("srv-stuck", log), listener)
        client = socket.create_connection((HOST, port))
        try:
            # Given a client that asks for the 64 KiB log 400 times and reads nothing
            client.sendall(b"LOG 0\n" * 400)
            await asyncio.sleep(0.2)
            held = host.connections
            # When it stays silent past the idle timeout
            await asyncio.sleep(1.0)
            return held, host.connections
        finally:
            client.close()
            await host.close()

    held, after_idle = asyncio.run(scenario())
    # Then the agent cut it: answers it still held for a peer that does not read are dropped,
    # rather than keeping the connection until they are read, however long that takes
    assert (held, after_idle) == (1, 0)
