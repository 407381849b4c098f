"""A host's name and tags come from ``worker.properties`` (``host.name``, ``host.tags``), so
several hosts can share one machine, each with its own install root; a name that could not be
part of a file, queue or worker name stops everything with exit 6 naming file, key and line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from enstratus_workers import cli
from enstratus_workers.config import check_config, load_settings
from enstratus_workers.daemons.subscriber.daemon import _owner_token
from enstratus_workers.db import open_databases
from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.runtime import procs, runner
from tests import servicehome as sh

PROPS = "services/worker/classes/worker.properties"


def line_of(path, key) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(key + " "))


def test_the_host_is_the_system_short_name_unless_host_name_says_otherwise(tmp_path):
    # Given an install without host.name, and one with host.name and host.tags
    plain = sh.make_home(tmp_path / "a")
    named = sh.make_home(tmp_path / "b", worker_props={"host.name": "host1", "host.tags": "winxp, big-mem"})
    # Then the first is this system's short host name, the second the configured one, tags in order
    assert load_settings(Layout(plain)).worker.host_name == short_hostname()
    worker = load_settings(Layout(named)).worker
    assert (worker.host_name, worker.host_tags) == ("host1", ("winxp", "big-mem"))


def test_the_host_name_is_the_default_daemon_name_and_every_identity_carries_it(tmp_path):
    # Given an install root of host 'host2' on this machine
    home = sh.make_home(tmp_path, worker_props={"host.name": "host2"})
    layout = Layout(home)
    settings = load_settings(layout)
    # Then a daemon started without --name is named after it, as its pid and log files are
    assert runner.default_name("publisher", layout, "start") == "host2"
    assert layout.pid_file("publisher", "host2").name == "publisher@host2.pid"
    # and a daemon process without --name on its command line is this install's 'host2'
    ident = procs.Identity("enstratus_workers.daemons.publisher", home, "host2")
    argv = ["python", "-m", "enstratus_workers.daemons.publisher", "start", "--home", str(home)]
    assert ident.matches(argv) and not procs.Identity(ident.module, home, short_hostname()).matches(argv)
    # And the heartbeat rows and the subscriber's owner token name host2, not the machine
    dbs = open_databases(settings.worker, layout)
    try:
        dbs.heartbeats.beat("subscriber", "host2", ttl_s=30)
        assert [(hb.name, hb.host) for hb in dbs.heartbeats.all()] == [("host2", "host2")]
    finally:
        dbs.close()
    assert _owner_token("host2", settings.worker.host_name).startswith("host2@host2:")


BAD_NAMES = {
    "a slash": "web/1", "a blank": "web 1", "two dots": "web..1", "a leading dot": ".web",
    "a leading dash": "-web", "a colon": "web:1", "an accent": "wéb", "64 characters": "h" * 64,
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_a_host_name_that_cannot_be_a_file_or_queue_name_is_refused(tmp_path, case):
    # Given an install whose host.name holds a character no file or queue name may
    home = sh.make_home(tmp_path, worker_props={"host.name": BAD_NAMES[case]})
    path = home / PROPS
    # When its config is checked, it is refused naming the file, the key and the line
    problems = check_config(Layout(home))
    assert [(p.file, p.key, p.line) for p in problems] == [(path, "host.name", line_of(path, "host.name"))]
    assert "cannot name a host" in problems[0].reason


def test_bad_tags_and_placements_name_file_key_and_line(tmp_path, capsys):
    # Given tags with a blank inside and placements that are not host:NAME / tag:TAG
    home = sh.make_home(tmp_path, worker_props={
        "host.tags": "win xp", "worker.types": "default, a, b, c",
        "worker.a.placement": "rack:7", "worker.b.placement": "*, host:web-1", "worker.c.placement": "host:"})
    path = home / PROPS
    # When config check runs, each is named with its line, and it exits 6
    assert cli.main(["--home", str(home), "config", "check"]) == 6
    err = capsys.readouterr().err
    for key, says in (("host.tags", "'win xp' is not a valid tag name"),
                      ("worker.a.placement", "'rack:7' is not a placement target"),
                      ("worker.b.placement", "cannot be combined with other targets"),
                      ("worker.c.placement", "'host:' does not name a host")):
        assert f"{path}:{line_of(path, key)}, key '{key}': " in err and says in err, (key, err)


def test_a_daemon_of_an_install_with_a_bad_host_name_does_not_start(tmp_path):
    # Given an install whose host.name would climb out of the run directory
    home = sh.make_home(tmp_path, worker_props={"host.name": "../etc"})
    path = home / PROPS
    # When its publisher is started without --name
    r = subprocess.run([sys.executable, "-m", "enstratus_workers.daemons.publisher", "start", "--home", str(home)],
                       capture_output=True, text=True, timeout=60)
    # Then it exits 6 naming the file, the key and the line, and nothing was written in run/
    assert r.returncode == 6, r.stdout + r.stderr
    assert f"{path}:{line_of(path, 'host.name')}, key 'host.name'" in r.stderr
    run_dir = home / "services" / "worker" / "run"
    assert not run_dir.exists() or not any(run_dir.iterdir())
    # while status still answers (going by the system's name), so a broken file never blocks a stop
    r = subprocess.run([sys.executable, "-m", "enstratus_workers.daemons.publisher", "status", "--home", str(home)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and f"publisher@{short_hostname()} is stopped" in r.stdout
