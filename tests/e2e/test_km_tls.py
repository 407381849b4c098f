"""The KM over TLS (``ssl = true``): a real KMService on a loopback port, real KMClients and raw
TLS sockets. Certificates come from ``km.certs`` (what ``tls init`` writes): one PKI the KM trusts,
and a second CA it does not.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from enstratus_workers.config.settings import KMClientSettings, Secret
from enstratus_workers.km import KMForbidden, KMRefused, certs
from enstratus_workers.km import protocol as p
from enstratus_workers.km.client import KMClient
from enstratus_workers.km.config import read_encryption_key
from enstratus_workers.km.envelope import REQUEST, Keyring, seal
from enstratus_workers.km.server import KMService
from tests.e2e.test_km_service import (  # noqa: F401 - home, install and km are fixtures
    KEY,
    KM_BIN,
    SECRET,
    client_for,
    home,
    install,
    km,
    km_settings,
    running,
)
from tests.servicehome import set_keys, wait_until

OTHER_SECRET = "other-account-secret-5e4d3c"
ACCESS = "w1 = acct-1*\nops = *\n"   # w3 has a certificate from the CA but is not listed


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    certs.init(base / "ours", ["w1", "w3", "ops"], ["localhost", "127.0.0.1"])
    certs.init(base / "theirs", ["w1"], ["localhost", "127.0.0.1"])
    return base


@pytest.fixture
def tls_km(pki, tmp_path):
    access = tmp_path / "km-access.cfg"
    access.write_text(ACCESS)
    ours = pki / "ours"
    settings = km_settings(tmp_path, ssl=True, ca_file=ours / "ca.crt", cert_file=ours / "km-server.crt",
                           key_file=ours / "km-server.key", access_file=access)
    with running(KMService(settings, Keyring(KEY), name="tls")) as address:
        yield address


def tls_client(address, pki: Path, host: str, ca: str = "ours", signer: str = "ours", **overrides) -> KMClient:
    """A KMClient for ``host`` whose certificate ``signer``'s CA issued, trusting ``ca``'s CA."""
    values = {"host": address[0], "port": address[1], "timeout": 3.0, "retries": 0, "ssl": True,
              "ca_file": pki / ca / "ca.crt", "cert_file": pki / signer / "clients" / f"{host}.crt",
              "key_file": pki / signer / "clients" / f"{host}.key"}
    values.update(overrides)
    return KMClient(KMClientSettings(**values), Secret(KEY), backoff=0.01)


def raw_tls(address, pki: Path, *, cert: str | None, maximum=None) -> ssl.SSLSocket:
    """A TLS connection by hand (the handshake done), with or without a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki / "ours" / "ca.crt")
    if cert:
        ctx.load_cert_chain(pki / "ours" / "clients" / f"{cert}.crt", pki / "ours" / "clients" / f"{cert}.key")
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = maximum
    sock = socket.create_connection(address, timeout=3)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def sealed_ping() -> bytes:
    frame, _ = seal(Keyring(KEY), REQUEST, p.encode_request("ping"))
    return frame


def test_a_client_with_its_certificate_reads_its_account_and_is_refused_another(tls_km, pki, caplog):
    # Given credentials in two accounts, stored by a client granted every account
    with tls_client(tls_km, pki, "ops") as ops:
        ops.put("acct-17", "aws", SECRET)
        ops.put("acct-2", "aws", OTHER_SECRET)
    caplog.set_level(logging.INFO, logger="enstratus_workers.km.server")
    # When w1 (granted acct-1*) reads both
    with tls_client(tls_km, pki, "w1") as w1:
        assert w1.get("acct-17", "aws").text() == SECRET
        with pytest.raises(KMForbidden) as refused:
            w1.get("acct-2", "aws")
        # Then writing or listing the other account is refused alike; ping is open to it
        with pytest.raises(KMForbidden):
            w1.put("acct-2", "aws", "overwrite-attempt")
        with pytest.raises(KMForbidden):
            w1.list("acct-2")
        w1.ping()
    # And the exception says which account and which client, and is a refusal (never retried)
    assert (refused.value.account, refused.value.client) == ("acct-2", "w1")
    assert isinstance(refused.value, KMRefused) and refused.value.code == "forbidden"
    assert "'acct-2'" in str(refused.value) and "'w1'" in str(refused.value)
    # And the KM logged the refusal (client, account, credential name) without any secret
    [line] = [r.getMessage() for r in caplog.records if "refused get" in r.getMessage()]
    assert "get acct-2 aws" in line and "client w1 " in line and "km-access.cfg" in line
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in logged and OTHER_SECRET not in logged and "overwrite-attempt" not in logged
    # And the other account's secret was not replaced
    with tls_client(tls_km, pki, "ops") as ops:
        assert ops.get("acct-2", "aws").text() == OTHER_SECRET


def test_a_client_the_access_list_does_not_name_may_only_ping(tls_km, pki, caplog):
    caplog.set_level(logging.WARNING, logger="enstratus_workers.km.server")
    with tls_client(tls_km, pki, "w3") as w3:
        w3.ping()
        with pytest.raises(KMForbidden, match="'w3' may not use account 'acct-1'.*is not listed"):
            w3.get("acct-1", "aws")
    assert any("client w3 is not listed" in r.getMessage() for r in caplog.records)


def test_a_tls_km_refuses_a_plaintext_client_and_says_why(tls_km, caplog):
    caplog.set_level(logging.WARNING, logger="enstratus_workers.km.server")
    with pytest.raises(KMRefused) as refused:
        client_for(tls_km).get("acct-17", "aws")
    assert refused.value.code == "tls_required" and "ssl = true" in str(refused.value)
    assert any("plaintext client at a TLS port" in r.getMessage() for r in caplog.records)


def test_a_tls_km_refuses_a_client_without_a_certificate(tls_km, pki, caplog):
    caplog.set_level(logging.WARNING, logger="enstratus_workers.km.server")
    # TLS 1.3: the client's side of the handshake completes; the KM's verdict comes as an alert
    with raw_tls(tls_km, pki, cert=None) as conn, pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        p.write_frame(conn, sealed_ping())
        p.read_frame(conn, deadline=time.monotonic() + 3)
    # the KM logs once its do_handshake() has raised, which may be after the client read the alert
    assert wait_until(lambda: any("TLS handshake failed" in r.getMessage() for r in caplog.records))


def test_a_tls_km_refuses_a_client_certificate_from_another_ca(tls_km, pki):
    # The client trusts the KM, but its own certificate comes from a CA the KM does not know
    with tls_client(tls_km, pki, "w1", signer="theirs") as stranger, pytest.raises(KMRefused) as refused:
        stranger.get("acct-17", "aws")
    assert refused.value.code == "tls" and "does not trust the CA" in str(refused.value)


def test_a_tls_km_refuses_tls_1_2(tls_km, pki):
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|NO_PROTOCOLS"):
        raw_tls(tls_km, pki, cert="w1", maximum=ssl.TLSVersion.TLSv1_2).close()
    # And a client with a certificate that speaks TLS 1.3 gets through the same port
    with raw_tls(tls_km, pki, cert="w1") as conn:
        assert conn.version() == "TLSv1.3"
        p.write_frame(conn, sealed_ping())
        assert p.read_frame(conn, deadline=time.monotonic() + 3)


def test_the_client_refuses_a_km_certificate_from_another_ca_or_for_another_name(tls_km, pki):
    unverified = pytest.raises(KMRefused, match="certificate does not verify")
    with tls_client(tls_km, pki, "w1", ca="theirs") as doubting, unverified as refused:
        doubting.ping()
    assert refused.value.code == "tls"
    unverified = pytest.raises(KMRefused, match="certificate does not verify")
    with tls_client(tls_km, pki, "w1", server_name="km.elsewhere.example") as misnamed, unverified:
        misnamed.ping()


def test_a_tls_client_at_a_plaintext_km_is_told_to_look_at_the_km(km, pki):  # noqa: F811
    told = pytest.raises(KMRefused, match="does not speak TLS here")
    with tls_client(km, pki, "w1") as client, told as refused:
        client.ping()
    assert refused.value.code == "tls"


def test_the_sealed_frames_inside_tls_still_refuse_a_wrong_key(tls_km, pki):
    settings = KMClientSettings(host=tls_km[0], port=tls_km[1], timeout=3.0, retries=0, ssl=True,
                                ca_file=pki / "ours" / "ca.crt", cert_file=pki / "ours" / "clients" / "w1.crt",
                                key_file=pki / "ours" / "clients" / "w1.key")
    with KMClient(settings, Secret(b"\x01" * 32)) as wrong_key, pytest.raises(KMRefused) as refused:
        wrong_key.ping()
    assert refused.value.code == "unknown_key"


@pytest.mark.slow
def test_the_daemon_serves_tls_as_configured_through_its_bin_wrapper(install):  # noqa: F811
    root, port, run = install
    # Given an install set up as the README says: tls init, km.cfg and the access list
    run(sys.executable, "-m", "enstratus_workers.cli", "--home", root, "tls", "init", "--hosts", "w1,w2",
        "--server-names", "localhost,127.0.0.1", check_rc=0)
    d = root / "services/km/tls"
    set_keys(root / "services/km/classes/km.cfg", {"ssl": "true", "ca_file": "services/km/tls/ca.crt",
                                                   "cert_file": "services/km/tls/km-server.crt",
                                                   "key_file": "services/km/tls/km-server.key"})
    (root / "services/km/classes/km-access.cfg").write_text("w1 = 42\nw2 = 7\n")
    run(KM_BIN, "start", "--name", "tls", check_rc=0)
    key = read_encryption_key(root / "services/worker/classes/enstratus-provisioning.cfg")

    def client(host):
        return KMClient(KMClientSettings(port=port, timeout=3, retries=0, ssl=True, ca_file=d / "ca.crt",
                                         cert_file=d / f"clients/{host}.crt", key_file=d / f"clients/{host}.key"),
                        key)

    # When w1 stores and reads its account's credential and w2 tries to read it
    with client("w1") as w1:
        w1.put(42, "aws", SECRET)
        assert w1.get(42, "aws").text() == SECRET
    with client("w2") as w2, pytest.raises(KMForbidden, match="'w2' may not use account '42'"):
        w2.get(42, "aws")
    # And a plaintext client knocks
    with pytest.raises(KMRefused, match="tls_required"):
        client_for(("127.0.0.1", port)).ping()
    run(KM_BIN, "stop", "--name", "tls", check_rc=0)
    # Then the log has the refusal, naming client, account and credential, and no secret
    text = (root / "services/km/log/km@tls.log").read_text()
    assert "speaks TLS 1.3 only" in text and "refused get 42 aws" in text and "client w2 " in text
    assert SECRET not in text
