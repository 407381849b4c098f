"""load_settings: the five config files into one validated, immutable Settings, or errors that point."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from enstratus_workers.config import (ConfigError, ConfigErrors, check_config, describe, ensure_provisioning_file,
                                      generate_key, load_settings, write_new_key)
from enstratus_workers.config import converters
from enstratus_workers.config.settings import (KMClientSettings, MQSettings, PersistenceSettings, Secret,
                                               WorkerSettings, WorkerType)
from enstratus_workers.layout import Layout

REPO_CLASSES = Path(__file__).resolve().parents[2] / "services" / "worker" / "classes"
KEY = base64.b64encode(bytes(range(32))).decode()
PROV = "enstratus-provisioning.cfg"


def write(layout: Layout, name: str, text: str, mode: int = 0o644) -> Path:
    path = layout.classes_dir / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def layout(tmp_path) -> Layout:
    """A home whose classes dir holds only a valid provisioning file."""
    layout = Layout(tmp_path)
    layout.classes_dir.mkdir(parents=True)
    write(layout, PROV, f"ENCRYPTION_KEY = {KEY}\nSOURCE_CIDR = 10.0.0.0/8, 2001:db8::/32\n", 0o600)
    return layout


def only_error(layout: Layout) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(layout)
    assert not isinstance(caught.value, ConfigErrors), str(caught.value)
    return caught.value


# --- defaults ----------------------------------------------------------------------------------

def test_the_committed_config_files_load_to_exactly_the_defaults(tmp_path):
    # Given a home with the repository's config files and a generated key file
    layout = Layout(tmp_path)
    shutil.copytree(REPO_CLASSES, layout.classes_dir, ignore=shutil.ignore_patterns(PROV))
    assert ensure_provisioning_file(layout)
    # When it is loaded
    s = load_settings(layout)
    # Then every value is the documented default
    assert dataclasses.replace(s.mq, source=None) == MQSettings()
    assert dataclasses.replace(s.worker, source=None) == WorkerSettings()
    assert dataclasses.replace(s.persistence, source=None) == PersistenceSettings()
    assert dataclasses.replace(s.km_client, source=None) == KMClientSettings()
    assert [str(n) for n in s.provisioning.source_cidrs] == ["127.0.0.1/32"]
    assert s.mq.source == layout.classes_dir / "mq.cfg"


def test_missing_files_mean_defaults_except_the_provisioning_file(layout):
    s = load_settings(layout)
    assert (s.mq, s.worker, s.persistence, s.km_client) == (
        MQSettings(), WorkerSettings(), PersistenceSettings(), KMClientSettings())
    assert s.home == layout.home
    assert s.provisioning.encryption_key.reveal() == bytes(range(32))
    assert [str(n) for n in s.provisioning.source_cidrs] == ["10.0.0.0/8", "2001:db8::/32"]


def test_a_missing_provisioning_file_tells_the_operator_how_to_make_one(layout):
    (layout.classes_dir / PROV).unlink()
    err = only_error(layout)
    assert err.file == layout.classes_dir / PROV
    assert "enstratus-workers keygen" in str(err) and "start the service once" in str(err)


def test_settings_are_immutable(layout):
    write(layout, "dasein-persistence.properties", "dsn.persistentCache.servers = riak\n")
    s = load_settings(layout)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mq.port = 1
    with pytest.raises(TypeError):
        s.persistence.bucket_backends["servers"] = "sqlite"
    assert s.persistence.backend_for("servers") == "riak"
    assert isinstance(s.worker.types, tuple) and isinstance(s.provisioning.source_cidrs, tuple)


# --- values that are read ----------------------------------------------------------------------

def test_every_file_sets_its_fields(layout):
    write(layout, "mq.cfg", "transport = amqp\nhost = mq1\nport = 5671\nssl = yes\nqueue_type = quorum\n"
                            "password = 's3cr,et'\nembedded_path = /var/q.sqlite\n", 0o600)
    write(layout, "enstratus-km-client.cfg", "host = km\nport = 3000\ntimeout = 1.5\nretries = 0\nssl = off\n")
    write(layout, "worker.properties", "worker.types = default, launcher\nworker.launcher.queues = launch, sync\n"
                                       "worker.launcher.max = 4\naction.time_limit = 1e2\n"
                                       "worker.default_queue = sync\n")
    write(layout, "dasein-persistence.properties", "dsn.cache.default = riak\ndasein.persist.riak.useSsl = TRUE\n"
                                                   "dsn.relational.url = sqlite:///p.db\n")
    s = load_settings(layout)
    assert (s.mq.transport, s.mq.host, s.mq.port, s.mq.ssl, s.mq.queue_type) == ("amqp", "mq1", 5671, True, "quorum")
    assert s.mq.password == Secret("s3cr,et") and s.mq.embedded_path == Path("/var/q.sqlite")
    assert s.km_client == KMClientSettings("km", 3000, 1.5, 0, False, source=s.km_client.source)
    assert s.worker.types == (WorkerType("default", ("default",), 2, 2),
                              WorkerType("launcher", ("launch", "sync"), 1, 4))
    assert (s.worker.time_limit, s.worker.default_queue) == (100.0, "sync")
    assert s.worker.type_for_queue("sync").name == "launcher"
    assert (s.persistence.default_backend, s.persistence.riak_ssl) == ("riak", True)
    assert s.persistence.relational_url.reveal() == "sqlite:///p.db"


# --- errors name the file, the key and the line ------------------------------------------------

BAD = [
    ("mq.cfg", "transport = embedded\ntransport_ = amqp\n", "transport_", 2, "did you mean 'transport'"),
    ("mq.cfg", "# c\nport = 70000\n", "port", 2, "between 1 and 65535"),
    ("mq.cfg", "transport = kafka\n", "transport", 1, "embedded, amqp"),
    ("mq.cfg", "heartbeat = soon\n", "heartbeat", 1, "not an integer"),
    ("mq.cfg", "ssl = maybe\n", "ssl", 1, "not a boolean"),
    ("mq.cfg", "port = 5672\nhost = a, b,\n", "host", 2, "node 3 of the host list is empty"),
    ("mq.cfg", "host = a,,b\n", "host", 1, "empty item in a comma-separated list"),
    ("mq.cfg", "host = mq1, mq2:65536\n", "host", 1, "node 2 of the host list has a bad port '65536'"),
    ("mq.cfg", "host = mq1:5673, mq1\nport = 5673\n", "host", 1, "node 2 of the host list (mq1:5673) is listed twice"),
    ("mq.cfg", "host = mq1, mq_2\n", "host", 1, "node 2 of the host list ('mq_2') is not a host name"),
    ("mq.cfg", "host = mq1, ::1\n", "host", 1, "goes in brackets"),
    ("mq.cfg", "[amqp]\nhost = x\n", "amqp", 1, "unknown section"),
    ("mq.cfg", "host = x\nhost = y\n", "host", 2, "set twice"),
    ("enstratus-km-client.cfg", "\ntimeout = 0\n", "timeout", 2, "greater than 0"),
    ("enstratus-km-client.cfg", "retries = 21\n", "retries", 1, "between 0 and 20"),
    ("enstratus-km-client.cfg", "Port = 1\n", "Port", 1, "did you mean 'port'"),
    ("worker.properties", "provisioning.url = postgresql://h/db\n", "provisioning.url", 1,
     "sqlite:// or mysql+pymysql://"),
    ("worker.properties", "analytics.url = mysql+pymysql://h\n", "analytics.url", 1, "names no database"),
    ("worker.properties", "action.max_attempts = 0\n", "action.max_attempts", 1, "between 1 and 100"),
    ("worker.properties", "action.time_limit = nan\n", "action.time_limit", 1, "not a number"),
    ("worker.properties", "worker.max_memory_mb = -1\n", "worker.max_memory_mb", 1, "between 0 and 16777216"),
    ("worker.properties", "publisher.batchsize = 5\n", "publisher.batchsize", 1, "did you mean 'publisher.batch'"),
    ("worker.properties", "worker.default.min = 3\n", "worker.default.min", 1, "greater than worker.default.max"),
    ("worker.properties", "worker.default.max = 0\n", "worker.default.max", 1, "between 1 and 256"),
    ("worker.properties", "\nworker.default.max = 1\n", "worker.default.max", 2, "min (2) is greater than"),
    ("worker.properties", "worker.launcher.min = 1\n", "worker.launcher.min", 1, "not listed in worker.types"),
    ("worker.properties", "worker.types = a, a\nworker.a.min = 1\n", "worker.types", 1, "listed twice"),
    ("worker.properties", "worker.types = bad.name\n", "worker.types", 1, "not a valid worker type"),
    ("worker.properties", "# c\nworker.default_queue = other\n", "worker.default_queue", 2, "not consumed by any"),
    ("dasein-persistence.properties", "dsn.cache.default = mongo\n", "dsn.cache.default", 1,
     "sqlite, relational, riak"),
    ("dasein-persistence.properties", "dasein.persist.riak.useSSL = true\n", "dasein.persist.riak.useSSL", 1,
     "did you mean 'dasein.persist.riak.useSsl'"),
    ("dasein-persistence.properties", "dsn.persistentCache. = riak\n", "dsn.persistentCache.", 1, "names no bucket"),
    (PROV, f"ENCRYPTION_KEY = {KEY}\nSOURCE_CIDR = 10.0.0.1/8\n", "SOURCE_CIDR", 2, "host bits set"),
    (PROV, f"ENCRYPTION_KEY = {KEY}\nSOURCE_CIDR = 10.0.0.0/33\n", "SOURCE_CIDR", 2, "not a CIDR"),
    (PROV, f"ENCRYPTION_KEY = {base64.b64encode(b'short').decode()}\n", "ENCRYPTION_KEY", 1, "exactly 32 bytes"),
    (PROV, "ENCRYPTION_KEY =\n", "ENCRYPTION_KEY", 1, "keygen"),
    (PROV, "SOURCE_CIDR =\n", "ENCRYPTION_KEY", None, "is missing"),
]


@pytest.mark.parametrize("name,text,key,line,fragment", BAD, ids=[f"{b[0]}:{b[2]}:{b[4]}" for b in BAD])
def test_a_bad_value_is_an_error_naming_file_key_and_line(layout, name, text, key, line, fragment):
    path = write(layout, name, text, 0o600)
    err = only_error(layout)
    assert (err.file, err.key, err.line) == (path, key, line)
    assert fragment in str(err)
    assert str(path) + (f":{line}" if line else "") in str(err) and repr(key) in str(err)


def test_relational_buckets_need_a_relational_url(layout):
    path = write(layout, "dasein-persistence.properties",
                 "dsn.cache.default = sqlite\ndsn.persistentCache.jobs = relational\n")
    err = only_error(layout)
    assert (err.file, err.key) == (path, "dsn.relational.url")
    assert "dsn.persistentCache.jobs (line 2)" in str(err)


def test_every_problem_in_every_file_is_reported_at_once(layout):
    write(layout, "mq.cfg", "port = 0\nprefetch = 0\n")
    write(layout, "worker.properties", "action.max_attempts = 0\n")
    problems = check_config(layout)
    assert [(p.file.name, p.key) for p in problems] == [
        ("mq.cfg", "port"), ("mq.cfg", "prefetch"), ("worker.properties", "action.max_attempts")]
    with pytest.raises(ConfigErrors) as caught:
        load_settings(layout)
    assert len(caught.value.errors) == 3 and str(caught.value).count("\n") == 2
    assert caught.value.key == "port"


def test_check_config_is_empty_for_a_valid_home(layout):
    assert check_config(layout) == []


# --- secrets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,text,key", [
    ("mq.cfg", "password = hunter2\n", "password"),
    ("worker.properties", "analytics.url = mysql+pymysql://u:hunter2@db/analytics\n", "analytics.url"),
    ("dasein-persistence.properties", "dsn.relational.url = mysql+pymysql://u:hunter2@db/p\n", "dsn.relational.url"),
    (PROV, f"ENCRYPTION_KEY = {KEY}\n", "ENCRYPTION_KEY"),
])
def test_a_file_holding_a_secret_that_others_can_read_is_refused(layout, name, text, key):
    path = write(layout, name, text, 0o644)
    err = only_error(layout)
    assert (err.file, err.key, err.line) == (path, key, 1)
    assert f"chmod 600 {path}" in str(err) and "0644" in str(err)
    assert "hunter2" not in str(err) and KEY not in str(err)
    os.chmod(path, 0o600)
    load_settings(layout)


def test_group_readable_alone_is_refused_too(layout):
    write(layout, "mq.cfg", "password = hunter2\n", 0o640)
    assert "readable by group" in str(only_error(layout))


def test_a_refused_file_is_refused_even_when_it_does_not_parse(layout):
    write(layout, "mq.cfg", "password = hunter2\nport = x\n", 0o644)
    assert {p.key for p in check_config(layout)} == {"password", "port"}


def test_files_without_secrets_may_be_world_readable(layout):
    write(layout, "mq.cfg", "password =\nuser = guest\n", 0o644)
    write(layout, "worker.properties", "provisioning.url = mysql+pymysql://root@db/p\n", 0o644)
    assert load_settings(layout).mq.password == Secret("")


@pytest.mark.parametrize("name,text", [
    ("mq.cfg", "password = hunter2, hunter3\n"),
    ("worker.properties", "provisioning.url = mysql+pymysql://u:hunter2@db:99999/p\n"),
    ("worker.properties", "provisioning.url = mysql+pymysql://u:hunter2@db:port/p\n"),
    ("worker.properties", "provisioning.url = mysql://u:hunter2@db/p\n"),
    ("dasein-persistence.properties", "dsn.relational.url = http://u:hunter2@x\n"),
    ("dasein-persistence.properties", "dsn.relational.url = mysql+pymysql://u:hunter2@x/db\\u12\n"),
    (PROV, "ENCRYPTION_KEY = hunter2hunter2==\n"),
    (PROV, "ENCRYPTION_KEY = 'hunter2\n"),
])
def test_secrets_never_appear_in_error_messages(layout, name, text):
    write(layout, name, text, 0o600)
    err = only_error(layout)
    assert "hunter2" not in str(err) and "hunter2" not in repr(err)


def test_secrets_never_appear_in_the_repr_of_the_settings_or_in_describe(layout):
    write(layout, "mq.cfg", "password = hunter2\n", 0o600)
    write(layout, "worker.properties", "provisioning.url = mysql+pymysql://u:hunter2@db/p?passwd=hunter2\n", 0o600)
    s = load_settings(layout)
    view = describe(s)
    for text in (repr(s), str(s), json.dumps(view)):
        assert "hunter2" not in text and KEY not in text
    assert view["mq"]["password"] == "***" and view["provisioning"]["encryption_key"] == "***"
    assert view["worker"]["provisioning_url"] == "mysql+pymysql://u:***@db/p?passwd=***"
    assert view["worker"]["analytics_url"] == "sqlite:///services/worker/data/analytics.db"
    assert view["provisioning"]["source_cidrs"] == ["10.0.0.0/8", "2001:db8::/32"]


# --- the key file ------------------------------------------------------------------------------

def test_generated_keys_are_base64_of_32_random_bytes():
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20 and all(len(base64.b64decode(k, validate=True)) == 32 for k in keys)


def test_ensure_creates_the_key_file_from_its_template_private_and_only_once(tmp_path):
    layout = Layout(tmp_path)
    layout.classes_dir.mkdir(parents=True)
    write(layout, PROV + ".in", "# doc\nENCRYPTION_KEY =\nSOURCE_CIDR = 192.168.0.0/16\n")
    old_umask = os.umask(0)   # even a permissive umask must not make the key readable
    try:
        assert ensure_provisioning_file(layout) is True
    finally:
        os.umask(old_umask)
    path = layout.classes_dir / PROV
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    assert first.startswith("# doc\n") and "SOURCE_CIDR = 192.168.0.0/16" in first
    assert ensure_provisioning_file(layout) is False and path.read_text() == first
    assert sorted(p.name for p in layout.classes_dir.iterdir()) == [PROV, PROV + ".in"]  # no temp left
    s = load_settings(layout)
    assert len(s.provisioning.encryption_key.reveal()) == 32
    assert [str(n) for n in s.provisioning.source_cidrs] == ["192.168.0.0/16"]


def test_ensure_without_a_template_still_writes_a_loadable_file(tmp_path):
    layout = Layout(tmp_path)
    assert ensure_provisioning_file(layout)
    assert [str(n) for n in load_settings(layout).provisioning.source_cidrs] == ["127.0.0.1/32"]


def test_write_new_key_replaces_only_the_key_and_makes_the_file_private(layout):
    path = write(layout, PROV, f"# keep me\nENCRYPTION_KEY = {KEY}\nSOURCE_CIDR = 10.0.0.0/8\n", 0o644)
    write_new_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    lines = path.read_text().splitlines()
    assert lines[0] == "# keep me" and lines[2] == "SOURCE_CIDR = 10.0.0.0/8" and KEY not in lines[1]
    s = load_settings(layout)
    assert s.provisioning.encryption_key.reveal() != bytes(range(32))
    assert sorted(p.name for p in layout.classes_dir.iterdir()) == [PROV]


# --- converters --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [(w, True) for w in ("true", "Yes", "ON", " 1 ")] +
                         [(w, False) for w in ("false", "NO", "off", "0")])
def test_boolean_accepts_the_usual_words_in_any_case(text, expected):
    assert converters.boolean(text) is expected


@pytest.mark.parametrize("text", ["1_000", "١٢", "0x10", "1.0", ""])
def test_integers_are_plain_ascii_digits(text):
    with pytest.raises(ValueError):
        converters.integer(text)


def test_numbers_must_be_finite_and_in_range():
    assert converters.number(" 2.5e1 ", lo=0, lo_open=True) == 25.0
    for text in ("inf", "1e999", "nan", "0"):
        with pytest.raises(ValueError):
            converters.number(text, lo=0, lo_open=True)


def test_comma_lists_drop_blanks_and_empty_items():
    assert converters.comma_list(" a, b ,,c, ") == ("a", "b", "c")


# --- guest heartbeats and schedules (worker.properties) ----------------------------------------

def test_guest_heartbeat_and_schedule_keys_set_their_fields(layout):
    from enstratus_workers.config.settings import Schedule

    write(layout, "worker.properties",
          "pinger.guest_interval = 5\npinger.guest_misses = 4\npinger.guest_concurrency = 100\n"
          "pinger.guest_timeout = 0.5\n"
          "schedule.firewall.sync.interval = 15\nschedule.firewall.sync.queue = default\n"
          'schedule.firewall.sync.arguments = {"full": true, "a": [1]}\n'
          "schedule.budget.sync.interval = 3600\n"
          "schedule.server.sync.interval = 0\n"
          "schedule.accounts = 42, 43,42\n")
    w = load_settings(layout).worker
    assert (w.guest_interval, w.guest_misses, w.guest_concurrency, w.guest_timeout) == (5.0, 4, 100, 0.5)
    # server.sync, a default, is turned off; the file's own schedules follow in file order
    assert w.schedules == (Schedule("firewall.sync", 15.0, "default", '{"a":[1],"full":true}'),
                           Schedule("budget.sync", 3600.0))
    assert w.schedule_accounts == ("42", "43")


def test_the_window_and_the_accounts_weights_reach_the_publisher(layout):
    # Given a window and weights, one account's name escaped as .properties keys are
    write(layout, "worker.properties", "publisher.window = 50\naccount.42.weight = 3\n"
                                       "account.acme\\ corp.weight: 2\naccount.a.b.weight = 1\n")
    publisher = load_settings(layout).publisher
    # Then the publisher's group has them, by the accounts' exact names
    assert publisher.window == 50
    assert dict(publisher.account_weights) == {"42": 3, "acme corp": 2, "a.b": 1}


def test_a_default_schedule_keeps_what_the_file_does_not_change(layout):
    from enstratus_workers.config.settings import Schedule

    write(layout, "worker.properties", 'schedule.server.sync.arguments = {"deep": 1}\n')
    assert load_settings(layout).worker.schedules == (Schedule("server.sync", 60.0, None, '{"deep":1}'),)


NEW_BAD = [
    ("schedule.firewall.sync.queue = default\n", "schedule.firewall.sync.queue", 1,
     "has no schedule.firewall.sync.interval"),
    ("schedule.server.sync.interval = 0.5\n", "schedule.server.sync.interval", 1, "0 (off) or at least 1 second"),
    ("# c\nschedule.server.sync.intervall = 5\n", "schedule.server.sync.intervall", 2,
     "did you mean 'schedule.server.sync.interval'"),
    ("schedule.server.sync.arguments = [1]\n", "schedule.server.sync.arguments", 1, "JSON object"),
    ("schedule.server.sync.arguments = {\"account\": 1}\n", "schedule.server.sync.arguments", 1,
     "must not set 'account'"),
    ("schedule.server.sync.queue = elsewhere\n", "schedule.server.sync.queue", 1, "not consumed by any"),
    ("schedule.a/b.interval = 5\n", "schedule.a/b.interval", 1, "not a valid action name"),
    (f"schedule.accounts = 1, {'x' * 101}\n", "schedule.accounts", 1, "not a usable account id"),
    ("pinger.guest_misses = 0\n", "pinger.guest_misses", 1, "between 1 and 1000"),
    ("pinger.guest_concurrency = 0\n", "pinger.guest_concurrency", 1, "between 1 and 20000"),
    ("pinger.guest_interval = 0\n", "pinger.guest_interval", 1, "greater than 0"),
    ("pinger.guest_timeout = 10\n", "pinger.guest_timeout", 1, "must be less than pinger.guest_interval"),
    ("\npinger.guest_interval = 1\n", "pinger.guest_interval", 2, "must be less than pinger.guest_interval"),
]


@pytest.mark.parametrize("text,key,line,fragment", NEW_BAD, ids=[b[1] + ":" + b[3] for b in NEW_BAD])
def test_a_bad_guest_or_schedule_key_names_file_key_and_line(layout, text, key, line, fragment):
    path = write(layout, "worker.properties", text)
    err = only_error(layout)
    assert (err.file, err.key, err.line) == (path, key, line)
    assert fragment in str(err)
