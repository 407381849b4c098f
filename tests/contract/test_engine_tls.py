"""A MySQL connection uses TLS only when the database URL asks for it (``dburl.driver_tls``).

PyMySQL 1.2 tries TLS on its own whenever the server offers it, and builds a default SSL
context (the system's CA store) for every connection to do so, whatever the server offers: 46-50
ms of CPU per pooled connection here, against 0.6-0.8 ms without (bench/README.md). So an engine
or a node probe of a URL with no ``ssl*`` option connects in plaintext without one, and a URL
that names its CA gets TLS as it asks.
"""

from __future__ import annotations

import pymysql
import pytest
import sqlalchemy as sa

from enstratus_workers.config import dburl
from enstratus_workers.config.hostlist import Node
from enstratus_workers.db import engine as engine_mod
from enstratus_workers.db.nodes import Prober
from enstratus_workers.layout import Layout


class _Seen(Exception):
    """Stops a connection once its arguments are seen (no server needs to answer)."""


def _arguments_of_a_connection(engine: sa.Engine) -> dict:
    seen: dict = {}

    @sa.event.listens_for(engine, "do_connect")
    def _look(_dialect, _record, _cargs, cparams):
        seen.update(cparams)
        raise _Seen()

    with pytest.raises(_Seen):
        engine.connect()
    return seen


@pytest.mark.mysql
def test_an_engine_of_a_url_without_tls_options_connects_in_plaintext_without_a_tls_context(mysql_url, tmp_path):
    # Given an engine of a URL that says nothing of TLS
    engine = engine_mod.make_engine(mysql_url, Layout(tmp_path))
    try:
        # When it connects
        with engine.connect() as conn:
            driver = conn.connection.dbapi_connection
            cipher = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'").one()[1]
        # Then PyMySQL was told not to try TLS: no context was made, the link is plaintext
        assert driver.ssl is False and getattr(driver, "ctx", None) is None
        assert cipher == ""
    finally:
        engine.dispose()


def test_a_url_that_names_its_ca_gets_tls_as_it_asks_and_no_other_option_is_dropped(tmp_path):
    # Given URLs that ask for TLS (a CA; a verified server identity), and one that does not
    asks = engine_mod.mysql_engine(dburl.parse(
        "mysql+pymysql://u:p@db1:3306/jobs?ssl_ca=/etc/mysql/ca.pem&ssl_check_hostname=true"),
        connect_args={"connect_timeout": 10})
    verify = engine_mod.mysql_engine(dburl.parse("mysql+pymysql://u:p@db1:3306/jobs?ssl_verify_identity=true"))
    plain = engine_mod.mysql_engine(dburl.parse("mysql+pymysql://u:p@db1:3306/jobs"),
                                    connect_args={"connect_timeout": 10})
    # When each makes a connection
    with_ca, with_identity, without = (_arguments_of_a_connection(e) for e in (asks, verify, plain))
    # Then the URLs' TLS options reach PyMySQL untouched, with no ssl_disabled beside them
    assert with_ca["ssl"]["ca"] == "/etc/mysql/ca.pem" and "ssl_disabled" not in with_ca
    assert with_identity["ssl_verify_identity"] == "true" and "ssl_disabled" not in with_identity
    # And the plain URL's connection is told to stay plaintext; the caller's own arguments stay
    assert without["ssl_disabled"] is True
    assert with_ca["connect_timeout"] == 10 and without["connect_timeout"] == 10


@pytest.fixture
def refused_connects(monkeypatch) -> list[dict]:
    """The arguments of every ``pymysql.connect`` from now on, each refused as unreachable."""
    made: list[dict] = []

    def connect(**params):
        made.append(params)
        raise pymysql.err.OperationalError(2003, "Can't connect (stopped by the test)")

    monkeypatch.setattr(pymysql, "connect", connect)
    return made


def test_a_cluster_engine_connects_to_its_writer_without_tls_unless_asked(refused_connects):
    made = refused_connects
    # Given a cluster URL (its connections go through the writer's do_connect, db/writer.py)
    engine = engine_mod.mysql_engine(dburl.parse("mysql+pymysql://u:p@db1:3306,db2:3306/jobs"))
    # When it tries to connect (every node's probe, then the connection itself, all refused)
    with pytest.raises(sa.exc.OperationalError):
        engine.connect()
    # Then every connection it made, probes included, was told to stay plaintext
    assert made and all(p.get("ssl_disabled") is True for p in made)
    assert {p["host"] for p in made} == {"db1", "db2"}


def test_a_node_probe_stays_plaintext_unless_its_url_asks_for_tls(refused_connects):
    made = refused_connects
    # Given the pinger's probes of a URL without TLS options and of one with a CA
    for url in ("mysql+pymysql://u:p@db1:3306/jobs", "mysql+pymysql://u:p@db1:3306/jobs?ssl_ca=/ca.pem"):
        state = Prober(dburl.parse(url).url, timeout=1).probe(Node("db1", 3306))
        assert not state.healthy
    # Then the first was told to stay plaintext, the second asked for TLS with its CA
    plain, tls = made
    assert plain["ssl_disabled"] is True and "ssl" not in plain
    assert tls["ssl"]["ca"] == "/ca.pem" and "ssl_disabled" not in tls


def _a_ca_file(path) -> str:
    """A self-signed CA certificate in PEM (any loadable CA will do: the server offers no TLS)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.mark.mysql
def test_a_url_that_asks_for_tls_is_refused_by_a_server_without_it_not_served_in_plaintext(mysql_url, tmp_path):
    # Given this machine's MariaDB, which offers no TLS, and a URL that asks for TLS with a CA
    ca = _a_ca_file(tmp_path / "ca.pem")
    engine = engine_mod.make_engine(f"{mysql_url}?ssl_ca={ca}", Layout(tmp_path), create_database=False)
    try:
        # When it connects, Then the connection is refused (PyMySQL 2026), not made in plaintext
        with pytest.raises(sa.exc.OperationalError) as refused:
            engine.connect()
        assert refused.value.orig.args[0] == 2026
    finally:
        engine.dispose()
