"""open_store and Persistence: each bucket goes to its configured backend, and only there."""

from __future__ import annotations

import socket
from pathlib import Path
from types import MappingProxyType

import pytest

from enstratus_workers.config.settings import PersistenceSettings, Secret
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout
from enstratus_workers.persist import NotFound, StoreError, StoreUnavailable, open_store
from enstratus_workers.persist.relational import RelationalStore
from enstratus_workers.persist.riak import RiakStore
from enstratus_workers.persist.sqlite import SqliteStore
from riak_emulator import RiakEmulator


def settings(**kw) -> PersistenceSettings:
    if "bucket_backends" in kw:
        kw["bucket_backends"] = MappingProxyType(kw["bucket_backends"])
    return PersistenceSettings(source=Path("/etc/dasein-persistence.properties"), **kw)


@pytest.fixture
def riak():
    with RiakEmulator() as emulator:
        yield emulator


def test_buckets_go_to_their_backend_and_the_rest_to_the_default(tmp_path, riak):
    # Given servers routed to Riak and everything else to SQLite
    s = settings(default_backend="sqlite", bucket_backends={"servers": "riak"},
                 riak_port=int(riak.url.rsplit(":", 1)[1]), sqlite_path=Path("data/p.db"))

    # When objects of both buckets are written through the routing store
    with open_store(s, Layout(tmp_path)) as persistence:
        persistence.put("servers", "i-1", {"kind": "server"}, {"owner_bin": "ops"})
        persistence.put("accounts", "42", {"kind": "account"}, {"owner_bin": "ops"})
        assert persistence.get("servers", "i-1").data == {"kind": "server"}
        assert persistence.query("accounts", "owner_bin", "ops") == ["42"]
        assert sorted(persistence.stores) == ["riak", "sqlite"]

    # Then each landed in its own backend only (the relative sqlite path under the home)
    with RiakStore(riak.url) as direct:
        assert direct.list_keys("servers") == ["i-1"]
        assert direct.list_keys("accounts") == []
    with SqliteStore(tmp_path / "data" / "p.db") as direct:
        assert direct.get("accounts", "42").data == {"kind": "account"}
        with pytest.raises(NotFound):
            direct.get("servers", "i-1")


def test_only_the_backends_in_use_are_opened(tmp_path):
    # Riak's port is closed here: opening it would not fail, but using it would
    with open_store(settings(riak_port=_closed_port()), Layout(tmp_path)) as persistence:
        assert list(persistence.stores) == ["sqlite"]
        persistence.ping()
        persistence.put("servers", "i-1", {})
    assert (tmp_path / "services/worker/data/persistence.db").exists()


def test_a_bucket_on_relational_without_a_url_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        open_store(settings(bucket_backends={"accounts": "relational"}), Layout(tmp_path))
    assert caught.value.key == "dsn.relational.url"
    assert "dasein-persistence.properties" in str(caught.value)


def test_an_unknown_backend_is_a_config_error_naming_its_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        open_store(settings(bucket_backends={"servers": "cassandra"}), Layout(tmp_path))
    assert caught.value.key == "dsn.persistentCache.servers"
    assert "cassandra" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        open_store(settings(default_backend="memory"), Layout(tmp_path))
    assert caught.value.key == "dsn.cache.default"


def test_a_non_mysql_relational_url_is_a_config_error(tmp_path):
    s = settings(default_backend="relational", relational_url=Secret("postgresql://db/x"))
    with pytest.raises(ConfigError) as caught:
        open_store(s, Layout(tmp_path))
    assert caught.value.key == "dsn.relational.url"


def test_relational_buckets_go_to_mysql(tmp_path, mysql_url):
    s = settings(bucket_backends={"accounts": "relational"}, relational_url=Secret(mysql_url))
    with open_store(s, Layout(tmp_path)) as persistence:
        persistence.put("accounts", "42", {"name": "acme"})
        persistence.put("servers", "i-1", {})
        persistence.ping()
    with RelationalStore(mysql_url) as direct:
        assert direct.list_keys("accounts") == ["42"]
        assert direct.list_keys("servers") == []


def test_riak_url_follows_host_port_and_ssl(tmp_path):
    for kw, url in [({}, "http://127.0.0.1:8098"),
                    ({"riak_host": "riak.example", "riak_port": 8443, "riak_ssl": True},
                     "https://riak.example:8443"),
                    ({"riak_host": "::1"}, "http://[::1]:8098")]:
        with open_store(settings(default_backend="riak", **kw), Layout(tmp_path)) as persistence:
            assert persistence.stores["riak"].base_url == url


def test_ping_fails_when_any_backend_is_down(tmp_path):
    s = settings(bucket_backends={"servers": "riak"}, riak_port=_closed_port())
    with open_store(s, Layout(tmp_path)) as persistence:
        with pytest.raises(StoreUnavailable):
            persistence.ping()
        with pytest.raises(StoreUnavailable):
            persistence.get("servers", "i-1")
        persistence.put("accounts", "42", {})   # the healthy backend keeps working


def test_a_closed_persistence_refuses_calls(tmp_path):
    persistence = open_store(settings(), Layout(tmp_path))
    persistence.close()
    assert persistence.stores == {}
    with pytest.raises(StoreError, match="closed"):
        persistence.get("servers", "i-1")
    with pytest.raises(StoreError, match="closed"):
        persistence.ping()


def test_on_first_use_a_backend_opens_when_a_bucket_routed_to_it_is_first_used(tmp_path, riak):
    # Given servers routed to Riak and the rest to SQLite, opened as a worker process opens them
    s = settings(bucket_backends={"servers": "riak"}, riak_port=int(riak.url.rsplit(":", 1)[1]),
                 sqlite_path=Path("p.db"))
    with open_store(s, Layout(tmp_path), on_first_use=True) as persistence:
        # Then nothing is open (no SQLite file made) until a bucket is used, and then only its backend
        assert persistence.stores == {} and not (tmp_path / "p.db").exists()
        persistence.put("accounts", "42", {"n": 1})
        assert list(persistence.stores) == ["sqlite"] and (tmp_path / "p.db").exists()
        assert persistence.get("accounts", "42").data == {"n": 1}
        # And a ping opens and pings the others
        persistence.ping()
        assert sorted(persistence.stores) == ["riak", "sqlite"]
    with pytest.raises(StoreError, match="closed"):
        persistence.get("accounts", "42")
    # A backend that fails to open fails the call that used it, and is tried again on the next
    with open_store(settings(default_backend="relational", relational_url=Secret("sqlite:///x.db")),
                    Layout(tmp_path), on_first_use=True) as persistence:
        for _ in range(2):
            with pytest.raises(ConfigError, match="speaks MySQL"):
                persistence.get("accounts", "42")
    # A route to an unknown backend is still refused when the store is made, not on first use
    with pytest.raises(ConfigError, match="unknown persistence backend"):
        open_store(settings(default_backend="nope"), Layout(tmp_path), on_first_use=True)


def test_a_version_from_one_backend_is_refused_by_another(tmp_path, riak):
    s = settings(bucket_backends={"servers": "riak"}, riak_port=int(riak.url.rsplit(":", 1)[1]))
    with open_store(s, Layout(tmp_path)) as persistence:
        riak_version = persistence.put("servers", "i-1", {}).version
        sql_version = persistence.put("accounts", "42", {}).version
        with pytest.raises(TypeError):
            persistence.put("accounts", "42", {}, expected=riak_version)
        with pytest.raises(TypeError):
            persistence.delete("servers", "i-1", expected=sql_version)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
