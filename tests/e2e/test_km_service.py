"""The KM service end to end: a real KMService on an ephemeral loopback port, real KMClients.

Each test starts the service in a thread with a temporary home, talks to it over TCP and stops
it; the last tests drive the daemon entry (``build``) and its config the way the runner does.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from enstratus_workers.config.settings import KMClientSettings, ProvisioningSettings, Secret, Settings
from enstratus_workers.daemons import km as km_daemon
from enstratus_workers.errors import ConfigError, DaemonError
from enstratus_workers.km import KMError, KMNotFound, KMRefused, KMUnavailable
from enstratus_workers.km import protocol as p
from enstratus_workers.km.client import KMClient
from enstratus_workers.km.config import KMSettings, load_km_settings, read_encryption_key
from enstratus_workers.km.envelope import REQUEST, RESPONSE, Keyring, now_ms, open_frame, seal
from enstratus_workers.km.server import KMService
from enstratus_workers.layout import Layout

KEY = os.urandom(32)
OLD_KEY = os.urandom(32)
WRONG_KEY = os.urandom(32)
SECRET = "AKIA-e2e-secret-value-9f8e7d6c"


def km_settings(home: Path, **overrides) -> KMSettings:
    values = dict(host="127.0.0.1", port=0,
                  credentials_url=Secret(f"sqlite:///{home / 'services/km/data/credentials.db'}"),
                  master_key_file=home / "services/km/classes/km-master.key",
                  idle_timeout=30.0, frame_timeout=0.5, first_frame_timeout=0.5)
    values.update(overrides)
    return KMSettings(**values)


@contextlib.contextmanager
def running(service: KMService):
    """Run ``service`` in a thread until the block ends; yields its (host, port)."""
    ready, failure = threading.Event(), []

    def target():
        try:
            service.run(ready.set)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="km-service")
    thread.start()
    try:
        assert ready.wait(10), "KM service did not become ready"
        if failure:
            raise failure[0]
        yield service.address
    finally:
        service.request_stop()
        thread.join(5)
        assert not thread.is_alive(), "KM service did not stop"
        assert not failure, failure


@pytest.fixture
def home(tmp_path):
    return tmp_path


@pytest.fixture
def km(home):
    with running(KMService(km_settings(home), Keyring(KEY), name="test")) as address:
        yield address


def client_for(address, key=KEY, retries=0, timeout=3.0, busy_patience=5.0) -> KMClient:
    return KMClient(KMClientSettings(host=address[0], port=address[1], timeout=timeout, retries=retries),
                    Secret(key), backoff=0.01, busy_patience=busy_patience)


def raw_exchange(address, data: bytes) -> bytes | None:
    """Send raw bytes on a fresh connection; the one frame the server answers, or None if it closed."""
    with socket.create_connection(address, timeout=3) as s:
        s.sendall(data)
        try:
            return p.read_frame(s, deadline=time.monotonic() + 3)
        except (p.FrameError, ConnectionResetError):
            return None


class Recorder:
    """A loopback TCP proxy in front of the KM that records frames and can replay a response."""

    def __init__(self, target):
        self.target = target
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []
        self.fake_response: bytes | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.address = self._listener.getsockname()[:2]
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="km-recorder")
        self._thread.start()

    def _loop(self):
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            with conn, socket.create_connection(self.target, timeout=3) as upstream:
                conn.settimeout(3)
                request = p.read_frame(conn)
                self.requests.append(request)
                p.write_frame(upstream, request)
                response = p.read_frame(upstream)
                self.responses.append(response)
                p.write_frame(conn, self.fake_response if self.fake_response is not None else response)

    def close(self):
        self._stop = True
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def recorder(km):
    r = Recorder(km)
    yield r
    r.close()


# -- the credentials API ----------------------------------------------------------------------

def test_put_get_list_delete_through_the_client(km, caplog):
    caplog.set_level(logging.DEBUG)
    with client_for(km) as client:
        # Given a credential put for account 42 (a str secret is stored as UTF-8)
        assert client.put(42, "aws", SECRET, kind="api_key", metadata={"region": "eu-west-1"}) == 1
        assert client.put("42", "ssh", b"\x00\x01binary-key", kind="ssh_key") == 1
        # When it is read back
        cred = client.get("42", "aws")
        # Then everything comes back, and the secret stays hidden unless revealed
        assert (cred.account, cred.name, cred.kind, cred.version) == ("42", "aws", "api_key", 1)
        assert cred.text() == SECRET and dict(cred.metadata) == {"region": "eu-west-1"}
        assert SECRET not in repr(cred) and SECRET not in str(cred)
        assert client.get("42", "ssh").secret.reveal() == b"\x00\x01binary-key"
        # And list shows names, kinds and metadata only
        listed = client.list(42)
        assert [(i.name, i.kind) for i in listed] == [("aws", "api_key"), ("ssh", "ssh_key")]
        assert not any(hasattr(i, "secret") for i in listed)
        # And a replaced credential bumps its version
        assert client.put(42, "aws", SECRET + "-rotated") == 2
        # And delete removes it, after which get and delete say KMNotFound
        client.delete(42, "aws")
        with pytest.raises(KMNotFound, match="aws"):
            client.get(42, "aws")
        with pytest.raises(KMNotFound):
            client.delete(42, "aws")
        client.ping()
        # And a secret near the size limit (a certificate chain) makes the round trip
        big = os.urandom(p.MAX_SECRET)
        client.put(42, "chain", big, kind="certificate")
        assert client.get(42, "chain").secret.reveal() == big
    # And no secret reached any log line, on either side
    assert caplog.records and SECRET not in caplog.text and "binary-key" not in caplog.text
    assert "put 42 aws" in caplog.text


def test_a_bad_request_is_refused_before_it_is_sent_and_by_the_server(km):
    with client_for(km) as client:
        with pytest.raises(KMRefused) as err:
            client.put(42, "aws", b"", kind="api_key")
        assert err.value.code == "bad_request"
        with pytest.raises(KMRefused):
            client.put(42, "x" * 500, b"s")
    # A request that authenticates but breaks the schema gets a sealed bad_request answer
    ring = Keyring(KEY)
    frame, rid = seal(ring, REQUEST, b'{"op":"explode"}')
    reply = open_frame(ring, raw_exchange(km, p.LENGTH.pack(len(frame)) + frame), RESPONSE)
    assert reply.request_id == rid
    with pytest.raises(KMRefused, match="unknown op"):
        p.decode_response(reply.payload)


def test_a_closed_client_refuses_calls(km):
    client = client_for(km)
    client.close()
    with pytest.raises(KMError, match="closed"):
        client.get(42, "aws")


# -- refusals, and the server keeps serving ---------------------------------------------------

def test_a_client_with_the_wrong_key_is_refused_clearly_while_a_good_client_still_works(km):
    good, bad = client_for(km), client_for(km, key=WRONG_KEY, retries=3)
    good.put(42, "aws", SECRET)
    # When a client configured with another ENCRYPTION_KEY asks
    started = time.monotonic()
    with pytest.raises(KMRefused) as err:
        bad.get(42, "aws")
    # Then it is refused at once (no retries) with a message that says what to check
    assert time.monotonic() - started < 1
    assert err.value.code == "unknown_key"
    assert "ENCRYPTION_KEY" in str(err.value) and SECRET not in str(err.value)
    # And the good client is still served
    assert good.get(42, "aws").text() == SECRET


# Fixed random bytes (seeded): parameters must be the same in every process that collects the tests
# (pytest-xdist compares the collections of its workers).
_GARBAGE = random.Random(20261206)


@pytest.mark.parametrize("garbage,expected", [
    (b"GET / HTTP/1.1\r\nHost: km\r\n\r\n", "frame_too_large"),  # prefix reads as ~1.2 GB
    (p.LENGTH.pack(40) + _GARBAGE.randbytes(40), "bad_frame"),               # well framed, too short
    (p.LENGTH.pack(300) + b"\x01Q" + _GARBAGE.randbytes(298), "unknown_key"),  # looks like a request
    (p.LENGTH.pack(5), None),                                         # the frame never comes
    (_GARBAGE.randbytes(3), None),                                            # not even a length prefix
])
def test_garbage_does_not_kill_the_server(km, garbage, expected, caplog):
    # When something that is not a KM client writes to the port
    answer = raw_exchange(km, garbage)
    # Then it gets an unauthenticated error frame saying why, or (if it never finishes a frame)
    # the connection is closed after frame_timeout
    assert (p.parse_error_frame(answer)[0] if answer is not None else None) == expected
    assert any(r.name == "enstratus_workers.km.server" and r.levelno == logging.WARNING for r in caplog.records)
    # And the KM keeps serving real clients
    with client_for(km) as client:
        client.put(1, "n", b"s")
        assert client.get(1, "n").secret.reveal() == b"s"


def test_an_oversized_frame_is_refused_with_a_clear_code(km):
    answer = raw_exchange(km, p.LENGTH.pack(64 << 20) + b"x" * 100)
    assert p.parse_error_frame(answer)[0] == "frame_too_large"


def test_a_tampered_request_is_refused(km):
    frame, _ = seal(Keyring(KEY), REQUEST, p.encode_request("list", "42"))
    tampered = frame[:-1] + bytes([frame[-1] ^ 1])
    answer = raw_exchange(km, p.LENGTH.pack(len(tampered)) + tampered)
    assert p.parse_error_frame(answer)[0] == "unauthentic"


def test_a_replayed_request_frame_is_refused(km, recorder):
    # Given a request captured on the wire while a client stored a credential
    with client_for(recorder.address) as client:
        client.put(42, "aws", SECRET)
    [captured] = recorder.requests
    assert SECRET.encode() not in captured
    # When an attacker sends the very same bytes again
    answer = raw_exchange(km, p.LENGTH.pack(len(captured)) + captured)
    # Then the KM refuses it as a replay, and the credential was written once
    assert p.parse_error_frame(answer)[0] == "replayed"
    with client_for(km) as client:
        assert client.get(42, "aws").version == 1


def test_a_replayed_response_is_refused_by_the_client(km, recorder):
    # Given a response recorded when the KM answered a get for credential "a"
    with client_for(recorder.address) as client:
        client.put(42, "a", b"secret-a")
        client.get(42, "a")
        # When the man in the middle hands that old response to a later get for "b"
        recorder.fake_response = recorder.responses[-1]
        with pytest.raises(KMRefused) as err:
            client.get(42, "b")
    # Then the client sees that it answers another request
    assert err.value.code == "bad_response"


def test_a_request_sealed_outside_the_replay_window_is_refused_as_stale(km):
    frame, _ = seal(Keyring(KEY), REQUEST, p.encode_request("ping"), timestamp_ms=now_ms() - 10 * 60_000)
    code, message = p.parse_error_frame(raw_exchange(km, p.LENGTH.pack(len(frame)) + frame))
    assert code == "stale" and "clock" in message


def test_rotation_serves_clients_on_the_old_and_the_new_key(home):
    # Given a KM rotating from OLD_KEY to KEY
    with running(KMService(km_settings(home), Keyring(KEY, OLD_KEY))) as address:
        new, old, wrong = client_for(address), client_for(address, key=OLD_KEY), client_for(address, key=WRONG_KEY)
        # Then clients on either key share the credentials, and a third key is still refused
        new.put(7, "gce", b"service-account-json")
        assert old.get(7, "gce").secret.reveal() == b"service-account-json"
        with pytest.raises(KMRefused):
            wrong.ping()


def authenticated_connection(address) -> socket.socket:
    """A connection that has made one valid request and stays open (a key holder's)."""
    conn = socket.create_connection(address, timeout=3)
    frame, _ = seal(Keyring(KEY), REQUEST, p.encode_request("ping"))
    p.write_frame(conn, frame)
    assert p.parse_error_frame(p.read_frame(conn, deadline=time.monotonic() + 3)) is None
    return conn


def test_when_key_holders_fill_the_km_a_client_is_told_busy_and_retries_briefly(home):
    # Given a KM of two connections, both held by authenticated clients
    with running(KMService(km_settings(home, max_connections=2), Keyring(KEY))) as address:
        held = [authenticated_connection(address) for _ in range(2)]
        try:
            # When a client calls, it is told busy and retries for its patience, then gives up
            started = time.monotonic()
            with pytest.raises(KMUnavailable, match="busy"):
                client_for(address, busy_patience=0.6).ping()
            assert 0.6 <= time.monotonic() - started < 2.5
            # And a client whose patience outlasts the crowd is served once a connection frees
            threading.Timer(0.3, held.pop().close).start()
            client_for(address, busy_patience=5).ping()
        finally:
            for conn in held:
                conn.close()


def test_an_idle_connection_gives_way_to_a_client(home):
    # Given a KM of one connection, held by a peer that never sends anything
    with running(KMService(km_settings(home, max_connections=1, first_frame_timeout=30), Keyring(KEY))) as address:
        with socket.create_connection(address, timeout=3) as hog:
            time.sleep(0.1)
            # When a client calls, Then it is served at once, and the idle peer was told busy
            started = time.monotonic()
            client_for(address, busy_patience=0).ping()
            assert time.monotonic() - started < 1
            assert p.parse_error_frame(p.read_frame(hog, deadline=time.monotonic() + 3))[0] == "busy"


def test_an_unreachable_km_is_retried_with_backoff_then_reported(caplog):
    # Given a port nobody listens on
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = s.getsockname()
    caplog.set_level(logging.WARNING)
    # When a client with 3 retries calls
    with pytest.raises(KMUnavailable) as err:
        client_for(address, retries=3).get(1, "x")
    # Then it tried four times and says so
    assert "after 4 attempts" in str(err.value)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 3


def test_a_stop_ends_the_service_within_a_second_even_with_idle_connections(home):
    service = KMService(km_settings(home), Keyring(KEY))
    ready = threading.Event()
    thread = threading.Thread(target=service.run, args=(ready.set,))
    thread.start()
    assert ready.wait(10)
    idle = socket.create_connection(service.address, timeout=3)
    try:
        client_for(service.address).ping()
        started = time.monotonic()
        service.request_stop()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - started < 1.0
        # And the port is closed
        with pytest.raises(OSError):
            socket.create_connection(service.address, timeout=1).close()
    finally:
        idle.close()


def test_the_master_key_is_created_private_on_first_start(home):
    with running(KMService(km_settings(home), Keyring(KEY))) as address:
        client_for(address).put(1, "n", b"s")
    key_file = home / "services/km/classes/km-master.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key_file.read_bytes()) == 32


def test_a_port_in_use_is_a_clear_start_failure(home, km):
    service = KMService(km_settings(home, port=km[1]), Keyring(KEY))
    with pytest.raises(DaemonError, match="cannot listen"):
        service.run(lambda: None)


# -- the daemon entry and km.cfg --------------------------------------------------------------

def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_build_reads_km_cfg_and_the_provisioning_key_and_serves_a_rotation(home):
    # Given an install with ENCRYPTION_KEY in the provisioning file and the old key in km.cfg
    write_private(home / "services/worker/classes/enstratus-provisioning.cfg", f"ENCRYPTION_KEY = {b64(KEY)}\n")
    write_private(home / "services/km/classes/km.cfg",
                  f"port = 0\nreplay_window = 30\nold_encryption_key = {b64(OLD_KEY)}\n")
    # When the runner builds the km daemon (the worker settings do not hold the key here)
    service = km_daemon.build(None, Layout(home), "main", None)
    assert service.daemon == "km" and service.settings.replay_window == 30
    assert KEY.hex() not in repr(service) and b64(KEY) not in repr(service.settings)
    # Then it serves clients on both keys
    with running(service) as address:
        client_for(address).put(1, "a", b"x")
        assert client_for(address, key=OLD_KEY).get(1, "a").secret.reveal() == b"x"
    assert (home / "services/km/data/credentials.db").exists()


def test_build_uses_the_key_the_config_loader_already_read(home):
    prov_file = home / "services/worker/classes/enstratus-provisioning.cfg"
    write_private(home / "services/km/classes/km.cfg", "port = 0\n")
    settings = Settings(home=home, mq=None, worker=None, persistence=None, km_client=None,
                        provisioning=ProvisioningSettings(encryption_key=Secret(KEY), source=prov_file))
    with running(km_daemon.build(settings, Layout(home), "main", None)) as address:
        client_for(address).ping()


def test_a_shared_readable_key_file_or_a_bad_value_stops_the_build(home):
    layout = Layout(home)
    prov = home / "services/worker/classes/enstratus-provisioning.cfg"
    # A provisioning file others can read is refused, naming the file
    write_private(prov, f"ENCRYPTION_KEY = {b64(KEY)}\n", mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600") as err:
        km_daemon.build(None, layout, "main", None)
    assert str(prov) in str(err.value) and b64(KEY) not in str(err.value)
    # A key of the wrong size is refused without echoing it
    write_private(prov, "ENCRYPTION_KEY = c2hvcnQ=\n")
    with pytest.raises(ConfigError, match="ENCRYPTION_KEY") as err:
        km_daemon.build(None, layout, "main", None)
    assert "c2hvcnQ" not in str(err.value) and err.value.line == 1
    # A km.cfg holding the old key must be private too
    write_private(prov, f"ENCRYPTION_KEY = {b64(KEY)}\n")
    write_private(home / "services/km/classes/km.cfg", f"old_encryption_key = {b64(OLD_KEY)}\n", mode=0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        km_daemon.build(None, layout, "main", None)


def test_km_cfg_errors_name_the_file_key_and_line(home):
    cfg = home / "services/km/classes/km.cfg"
    write_private(cfg, "# comment\nport = 70000\n")
    with pytest.raises(ConfigError) as err:
        load_km_settings(Layout(home))
    assert (err.value.key, err.value.line, err.value.file) == ("port", 2, cfg)
    write_private(cfg, "prot = 2013\n")
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_km_settings(Layout(home))
    assert err.value.key == "prot"
    write_private(cfg, "old_encryption_key = not-base64-secretish\n")
    with pytest.raises(ConfigError) as err:
        load_km_settings(Layout(home))
    assert "secretish" not in str(err.value) and err.value.key == "old_encryption_key"


def test_the_shipped_km_cfg_is_valid_and_means_the_defaults():
    checkout = Path(__file__).resolve().parents[2]
    settings = load_km_settings(Layout(checkout))
    assert (settings.host, settings.port) == ("127.0.0.1", 2013)
    assert settings.credentials_url.reveal() == f"sqlite:///{checkout / 'services/km/data/credentials.db'}"
    assert settings.master_key_file == checkout / "services/km/classes/km-master.key"


# -- the real daemon: services/km/bin/km and etc/init.d/enstratus-km ----------------------------

CHECKOUT = Path(__file__).resolve().parents[2]
KM_BIN = CHECKOUT / "services/km/bin/km"
INIT = CHECKOUT / "etc/init.d/enstratus-km"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def install(tmp_path):
    """A fresh install root for the daemon, its KM on a free loopback port; stopped afterwards."""
    home = tmp_path / "home"
    port = free_port()
    write_private(home / "services/km/classes/km.cfg", f"port = {port}\n")
    env = dict(os.environ, ENSTRATUS_HOME=str(home))

    def run(*argv, check_rc=None):
        done = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=60)
        if check_rc is not None:
            assert done.returncode == check_rc, (argv, done.returncode, done.stdout, done.stderr)
        return done

    yield home, port, run
    for pid_file in (home / "services/km/run").glob("km@*.pid"):
        name = pid_file.name[len("km@"):-len(".pid")]
        run(KM_BIN, "stop", "--name", name, "--grace", "5")


@pytest.mark.slow
def test_the_daemon_starts_serves_and_stops_through_its_bin_wrapper(install):
    home, port, run = install
    # Given the KM started as an operator would
    run(KM_BIN, "start", "--name", "e2e", check_rc=0)
    pid_file = home / "services/km/run/km@e2e.pid"
    assert pid_file.exists() and (home / "services/km/log/km@e2e.log").exists()
    assert "running" in run(KM_BIN, "status", "--name", "e2e", check_rc=0).stdout
    # When a client holding the install's ENCRYPTION_KEY uses it
    key = read_encryption_key(home / "services/worker/classes/enstratus-provisioning.cfg")
    with KMClient(KMClientSettings(port=port, timeout=3, retries=0), key) as client:
        client.put(42, "aws", SECRET, metadata={"region": "us-east-1"})
        assert client.get(42, "aws").text() == SECRET
    # Then a second start changes nothing, and stop stops it (status 3, pid file gone)
    run(KM_BIN, "start", "--name", "e2e", check_rc=0)
    run(KM_BIN, "stop", "--name", "e2e", check_rc=0)
    assert run(KM_BIN, "status", "--name", "e2e").returncode == 3 and not pid_file.exists()
    # And the log says what happened without the secret, and the database does not hold it
    text = (home / "services/km/log/km@e2e.log").read_text()
    assert "put 42 aws" in text and SECRET not in text
    assert SECRET.encode() not in (home / "services/km/data/credentials.db").read_bytes()


@pytest.mark.slow
def test_the_init_script_speaks_lsb(install):
    home, port, run = install
    # start / status / stop, with LSB codes
    run(INIT, "start", check_rc=0)
    assert run(INIT, "status").returncode == 0
    [pid_file] = (home / "services/km/run").glob("km@*.pid")
    run(INIT, "restart", check_rc=0)
    run(INIT, "stop", check_rc=0)
    assert run(INIT, "status").returncode == 3
    # A pid file whose process is gone: status 1, and clean removes it
    pid_file.write_text(f"{dead_pid()}\n")
    assert run(INIT, "status").returncode == 1
    assert "removed stale pid file" in run(INIT, "clean", check_rc=0).stdout
    assert run(INIT, "status").returncode == 3
    # An unknown verb is an invalid argument
    assert run(INIT, "bounce").returncode == 2


@pytest.mark.slow
def test_clean_stops_a_km_that_lost_its_pid_file(install):
    home, port, run = install
    # Given a running KM whose pid file was deleted
    run(KM_BIN, "start", "--name", "stray", check_rc=0)
    pid_file = home / "services/km/run/km@stray.pid"
    pid = int(pid_file.read_text().split()[0])
    pid_file.unlink()
    # When the operator runs clean
    out = run(INIT, "clean", check_rc=0).stdout
    # Then the stray is stopped and the port is free again
    assert f"stray KM process {pid}" in out
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def dead_pid() -> int:
    """A pid that is not running: one of a child that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
