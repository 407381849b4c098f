"""The Riak backend's HTTP behaviour beyond the shared contract, against the Riak emulator.

What goes over the wire (headers, paths, bucket types), siblings (300), connection reuse,
timeouts and refused connections.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from enstratus_workers.persist import SiblingsError, StaleWriteError, StoreUnavailable
from enstratus_workers.persist.riak import RiakStore, RiakVersion
from riak_emulator import RiakEmulator


@pytest.fixture
def riak():
    with RiakEmulator() as emulator:
        yield emulator


@pytest.fixture
def store(riak):
    with RiakStore(riak.url) as s:
        yield s


def test_a_put_sends_json_in_its_envelope_and_one_index_header_per_index(riak, store):
    store.put("servers", "i-1", {"cpus": 2}, {"owner_bin": "Zoë", "cpus_int": 2}, schema=3)

    stored = riak.objects[(b"default", b"servers", b"i-1")].siblings[0]
    assert stored.content_type == "application/json"
    assert json.loads(stored.value) == {"schema": 3, "data": {"cpus": 2}}
    assert sorted(stored.indexes) == [("cpus_int", b"2"), ("owner_bin", "Zoë".encode())]


def test_the_version_is_the_vclock_and_etag_riak_returned(riak, store):
    written = store.put("servers", "i-1", {})
    stored = riak.objects[(b"default", b"servers", b"i-1")]
    assert written.version == RiakVersion(stored.vclock, f'"{stored.etag}"')
    assert store.get("servers", "i-1").version == written.version


def test_a_type_slash_bucket_name_uses_the_bucket_type_path(riak, store):
    store.put("maps/servers", "i-1", {"typed": True}, {"owner_bin": "ops"})
    store.put("servers", "i-1", {"typed": False})

    assert (b"maps", b"servers", b"i-1") in riak.objects
    assert store.get("maps/servers", "i-1").data == {"typed": True}
    assert store.get("servers", "i-1").data == {"typed": False}
    assert store.query("maps/servers", "owner_bin", "ops") == ["i-1"]
    assert store.query("servers", "owner_bin", "ops") == []
    assert store.list_keys("maps/servers") == ["i-1"]


def test_siblings_are_reported_not_silently_resolved(riak, store):
    # Given a bucket with allow_mult=true and a client that writes without the vclock
    riak.allow_mult = True
    store.put("servers", "i-1", {"by": "us"})
    with requests.put(f"{riak.url}/buckets/servers/keys/i-1", data=b'{"by": "them"}',
                      headers={"Content-Type": "application/json"}, timeout=5) as r:
        assert r.status_code == 204

    # When the object is read, Then the store refuses to pick one of the two
    with pytest.raises(SiblingsError, match="allow_mult"):
        store.get("servers", "i-1")

    # And an unconditional put, which sends the siblings' vclock, replaces them
    store.put("servers", "i-1", {"by": "resolver"})
    assert store.get("servers", "i-1").data == {"by": "resolver"}
    assert len(riak.objects[(b"default", b"servers", b"i-1")].siblings) == 1


def test_a_conditional_write_on_siblings_is_stale(riak, store):
    riak.allow_mult = True
    read = store.put("servers", "i-1", {"by": "us"})
    with requests.put(f"{riak.url}/buckets/servers/keys/i-1", data=b"{}",
                      headers={"Content-Type": "application/json"}, timeout=5) as r:
        assert r.status_code == 204
    with pytest.raises(StaleWriteError):
        store.put("servers", "i-1", {"by": "us again"}, expected=read.version)


def test_a_value_written_by_another_client_reads_as_schema_0(riak, store):
    with requests.put(f"{riak.url}/buckets/servers/keys/legacy", data=b'{"name": "old"}',
                      headers={"Content-Type": "application/json",
                               "x-riak-index-owner_bin": "ops, dev"}, timeout=5) as r:
        assert r.status_code == 204
    read = store.get("servers", "legacy")
    assert (read.data, read.schema) == ({"name": "old"}, 0)
    assert read.indexes == {"owner_bin": "dev"}     # several values: the first in sort order
    assert store.query("servers", "owner_bin", "ops") == ["legacy"]


def test_if_match_on_a_deleted_key_recreates_it_as_riak_does(store):
    # The documented limitation: webmachine only refuses If-Match: * on a missing resource
    read = store.put("servers", "i-1", {"life": 1})
    store.delete("servers", "i-1")
    store.put("servers", "i-1", {"life": 2}, expected=read.version)
    assert store.get("servers", "i-1").data == {"life": 2}


def test_connections_are_kept_alive_and_reused(riak, store):
    for n in range(20):
        store.put("servers", f"i-{n}", {})
        store.get("servers", f"i-{n}")
    assert store.list_keys("servers")
    assert riak.connections == 1


def test_a_refused_connection_is_store_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RiakStore(f"http://127.0.0.1:{port}", connect_timeout=1) as store:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.put("servers", "i-1", {})


def test_a_server_that_does_not_answer_in_time_is_store_unavailable(riak):
    riak.stall = 5.0
    with RiakStore(riak.url, read_timeout=0.2) as store:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.get("servers", "i-1")
        assert time.monotonic() - started < 2


def test_ping_of_something_that_is_not_riak_fails(riak):
    with RiakStore(riak.url + "/not-riak") as store:
        with pytest.raises(StoreUnavailable, match="404"):
            store.ping()


def test_a_version_of_another_backend_is_refused(store):
    store.put("servers", "i-1", {})
    with pytest.raises(TypeError):
        store.put("servers", "i-1", {}, expected=1)
