"""``tls init`` / ``tls issue`` and the TLS keys of ``enstratus-km-client.cfg``, ``km.cfg`` and
``km-access.cfg``: what the files hold and their modes, no overwriting, and every bad value refused
by ``config check`` (exit 6) naming its key, as the daemons refuse it at start."""

from __future__ import annotations

import os
import re
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enstratus_workers import cli
from enstratus_workers.errors import ConfigError
from enstratus_workers.km.access import load_access
from enstratus_workers.km.config import load_km_settings
from enstratus_workers.km.envelope import Keyring
from enstratus_workers.km.server import KMService
from enstratus_workers.layout import Layout
from tests import servicehome as sh
from tests.unit.test_config_check import home  # noqa: F401 - the scratch install fixture

CLIENT_CFG = "services/worker/classes/enstratus-km-client.cfg"
KM_CFG = "services/km/classes/km.cfg"
ACCESS_CFG = "services/km/classes/km-access.cfg"


def tls(home, *args):
    return cli.main(["--home", str(home), "tls", *args])


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def tls_home(home):
    """``home`` with TLS on at both ends, set up as the README says (tls init, then the lines it prints)."""
    assert tls(home, "init", "--hosts", "w1") == 0
    sh.set_keys(home / CLIENT_CFG, {"ssl": "true", "ca_file": "services/km/tls/ca.crt",
                                    "cert_file": "services/km/tls/clients/w1.crt",
                                    "key_file": "services/km/tls/clients/w1.key",
                                    "server_name": "localhost"})
    sh.set_keys(home / KM_CFG, {"ssl": "true", "ca_file": "services/km/tls/ca.crt",
                                "cert_file": "services/km/tls/km-server.crt",
                                "key_file": "services/km/tls/km-server.key"})
    (home / ACCESS_CFG).write_text("# client = accounts\nw1 = 42, acme-*\n")
    return home


def test_tls_init_writes_keys_0600_certificates_0644_naming_the_hosts(home, capsys):
    old_umask = os.umask(0o077)   # a strict umask must not leave certificates unreadable
    try:
        assert tls(home, "init", "--hosts", "w1.example.com,w2", "--server-names", "km.example.com,10.0.0.5") == 0
    finally:
        os.umask(old_umask)
    d = home / "services/km/tls"
    keys = [d / "ca.key", d / "km-server.key", d / "clients/w1.example.com.key", d / "clients/w2.key"]
    assert [mode(k) for k in keys] == [0o600] * 4
    assert [mode(k.with_name(k.name[:-4] + ".crt")) for k in keys] == [0o644] * 4
    # The client certificates name their host in CN and subjectAltName, for client auth only
    w1 = cert(d / "clients/w1.example.com.crt")
    assert w1.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "w1.example.com"
    assert w1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["w1.example.com"]
    assert list(w1.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # The KM's names the DNS name and the IP address, for server auth; the CA signed both
    server = cert(d / "km-server.crt")
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["km.example.com"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    ca = cert(d / "ca.crt")
    assert server.issuer == ca.subject == w1.issuer
    w1.verify_directly_issued_by(ca)
    # And it says what to put in each config file
    out = capsys.readouterr().out
    assert "cert_file = services/km/tls/clients/w2.crt" in out and "ssl = true" in out


def test_tls_init_refuses_to_overwrite_keys_unless_forced(home, capsys):
    assert tls(home, "init", "--hosts", "w1") == 0
    d = home / "services/km/tls"
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    capsys.readouterr()
    # When run again, Then it refuses (exit 1), names the keys, and changes nothing
    assert tls(home, "init", "--hosts", "w1") == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and str(d / "ca.key") in err and "--force" in err
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before
    # And with --force it makes a new CA (and keys 0600 again)
    assert tls(home, "init", "--hosts", "w1", "--force") == 0
    assert (d / "ca.key").read_bytes() != before[d / "ca.key"] and mode(d / "ca.key") == 0o600


def test_tls_issue_adds_a_host_from_the_existing_ca_and_refuses_an_existing_one(home):
    assert tls(home, "init", "--hosts", "w1") == 0
    d = home / "services/km/tls"
    ca_before = (d / "ca.crt").read_bytes()
    assert tls(home, "issue", "--hosts", "w2") == 0
    cert(d / "clients/w2.crt").verify_directly_issued_by(cert(d / "ca.crt"))
    assert (d / "ca.crt").read_bytes() == ca_before and mode(d / "clients/w2.key") == 0o600
    assert tls(home, "issue", "--hosts", "w1") == 1
    assert tls(home, "issue", "--hosts", "../etc/passwd") == 2       # not a host name: usage
    assert tls(home, "issue", "--dir", str(home / "nowhere"), "--hosts", "w3") == 1
    assert not (home / "etc").exists()


def test_a_tls_setup_made_as_the_readme_says_passes_config_check(tls_home):
    assert cli.main(["--home", str(tls_home), "config", "check"]) == 0
    km = load_km_settings(Layout(tls_home))
    assert km.ssl and km.key_file == tls_home / "services/km/tls/km-server.key"
    assert load_access(km.access_file).allows(("w1",), "acme-7")
    assert not load_access(km.access_file).allows(("w1",), "43")


def _chmod(path, bits):
    os.chmod(path, bits)


# (file, key to break, how, the key the refusal must name, what it must say)
BROKEN = {
    "client ca_file missing": (CLIENT_CFG, {"ca_file": "services/km/tls/none.crt"}, None, "ca_file", "cannot read"),
    "client key readable by group": (CLIENT_CFG, {}, ("services/km/tls/clients/w1.key", 0o640), "key_file",
                                     "chmod 600"),
    "client cert not the key's": (CLIENT_CFG, {"cert_file": "services/km/tls/km-server.crt"}, None, "cert_file",
                                  "do not load as a certificate and its private key"),
    "client ca_file not a certificate": (CLIENT_CFG, {"ca_file": "services/km/tls/clients/w1.key"}, None,
                                         "ca_file", "holds no PEM certificate"),
    "client ca_file a directory": (CLIENT_CFG, {"ca_file": "services/km/tls"}, None, "ca_file",
                                   "is not a regular file"),
    "client ssl not a boolean": (CLIENT_CFG, {"ssl": "maybe"}, None, "ssl", "is not a boolean"),
    "km key readable by others": (KM_CFG, {}, ("services/km/tls/km-server.key", 0o604), "key_file", "chmod 600"),
    "km cert_file missing": (KM_CFG, {"cert_file": "/nonexistent/km.crt"}, None, "cert_file", "cannot read"),
    "km access_file missing": (KM_CFG, {"access_file": "services/km/classes/none.cfg"}, None, "access_file",
                               "does not exist"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_bad_tls_value_exits_6_naming_the_key(tls_home, case, capsys):
    rel, keys, chmod, named, says = BROKEN[case]
    sh.set_keys(tls_home / rel, keys)
    if chmod:
        _chmod(tls_home / chmod[0], chmod[1])
    assert cli.main(["--home", str(tls_home), "config", "check"]) == 6
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(tls_home / rel))}(:\d+)?, key '{named}'", err), err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize("line, key, says", [
    ("w1 = ", "w1", "needs account patterns"),
    ("bad name! = 42", "bad name!", "is not a host name"),
    ("w1 = 42\nw1 = 43", "w1", "is set twice"),
    ("[clients]\nw1 = 42", "clients", "sections are not used"),
])
def test_a_bad_access_list_line_exits_6_naming_the_client(tls_home, line, key, says, capsys):
    (tls_home / ACCESS_CFG).write_text(line + "\n")
    assert cli.main(["--home", str(tls_home), "config", "check"]) == 6
    err = capsys.readouterr().err
    assert str(tls_home / ACCESS_CFG) in err and f"key '{key}'" in err and says in err, err


def test_the_km_refuses_to_build_a_tls_service_from_bad_files_as_config_check_does(tls_home):
    km = load_km_settings(Layout(tls_home))
    os.chmod(km.key_file, 0o644)
    with pytest.raises(ConfigError) as refused:
        KMService(km, Keyring(bytes(32)))
    assert refused.value.key == "key_file" and "chmod 600" in str(refused.value)


def test_the_shipped_km_config_files_leave_tls_off():
    assert not load_km_settings(Layout(sh.REPO)).ssl
    from enstratus_workers.config.km_file import read_km_client

    assert not read_km_client(sh.REPO / CLIENT_CFG).ssl
