"""``enstratus-workers config check`` reads every file any daemon reads, with the daemons' readers
and ranges, and refuses (exit 6, naming file, key and line) whatever a daemon would refuse."""

from __future__ import annotations

import os
import re

import pytest

from enstratus_workers import cli
from enstratus_workers.config import check_config, limits, load_settings
from enstratus_workers.config.settings import KMClientSettings, Secret
from enstratus_workers.errors import ConfigError
from tests import servicehome as sh


@pytest.fixture
def home(tmp_path):
    """A scratch install root with the repository's config files, the KM's included."""
    home = sh.make_home(tmp_path)
    sh.add_km(home)
    return home


def check(home, *extra):
    return cli.main(["--home", str(home), "config", "check", *extra])


WORKER = "services/worker/classes"
BAD = {
    "admin.cfg bad port": (f"{WORKER}/admin.cfg", "port", "70000", "between 0 and 65535"),
    "admin.cfg bad max_body": (f"{WORKER}/admin.cfg", "max_body", "10", "between 1024 and 67108864"),
    "mq.cfg host list with a bad entry": (f"{WORKER}/mq.cfg", "host", "rabbit1:5672, rabbit2:x, rabbit3",
                                          "node 2 of the host list has a bad port 'x'"),
    "mq.cfg host list with a duplicate": (f"{WORKER}/mq.cfg", "host", "rabbit1, rabbit1:5672",
                                          "node 2 of the host list (rabbit1:5672) is listed twice"),
    "km.cfg bad port": ("services/km/classes/km.cfg", "port", "70000", "between 0 and 65535"),
    "km.cfg bad frame_timeout": ("services/km/classes/km.cfg", "frame_timeout", "0", "between 0.1 and 600"),
    "KM client ca_file missing": (f"{WORKER}/enstratus-km-client.cfg", "ca_file", "", "must not be empty"),
    "max_attempts 10^29": (f"{WORKER}/worker.properties", "action.max_attempts", str(10**29),
                           f"between 1 and {limits.MAX_ATTEMPTS}"),
    "worker max above the API's": (f"{WORKER}/worker.properties", "worker.default.max",
                                   str(limits.MAX_PROCESSES + 1), f"between 1 and {limits.MAX_PROCESSES}"),
    "time_limit of a century": (f"{WORKER}/worker.properties", "action.time_limit", "3153600000",
                                "at most 604800"),
    "schedule of an unknown action": (f"{WORKER}/worker.properties", "schedule.nosuch.interval", "60",
                                      "no action 'nosuch' is registered"),
    "a window of 0": (f"{WORKER}/worker.properties", "publisher.window", "0", "between 1 and 100000"),
    "a negative window": (f"{WORKER}/worker.properties", "publisher.window", "-5", "between 1 and 100000"),
    "a window that is no number": (f"{WORKER}/worker.properties", "publisher.window", "ten", "'ten' is not an integer"),
    "a weight of 0": (f"{WORKER}/worker.properties", "account.42.weight", "0", "between 1 and 1000"),
    "a negative weight": (f"{WORKER}/worker.properties", "account.acme-corp.weight", "-1", "between 1 and 1000"),
    "a weight that is no number": (f"{WORKER}/worker.properties", "account.42.weight", "heavy",
                                   "'heavy' is not an integer"),
    "a weight of no account": (f"{WORKER}/worker.properties", "account.a,b.weight", "2", "'a,b' is not an account name"),
}


def line_of(path, key) -> int:
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*[=:]", text):
            return number
    raise AssertionError(f"{key} not in {path}")


@pytest.mark.parametrize("case", list(BAD))
def test_config_check_exits_6_naming_file_key_and_line(home, case, capsys):
    # Given a home whose config is valid but for one value a daemon refuses
    rel, key, value, says = BAD[case]
    path = home / rel
    sh.set_keys(path, {key: value})
    # When the operator runs config check
    code = check(home)
    # Then it exits 6, naming the file, its line and the key, and saying why
    err = capsys.readouterr().err
    assert code == 6, err
    assert f"{path}:{line_of(path, key)}, key '{key}'" in err and says in err, err
    assert "Traceback" not in err


def test_config_check_passes_the_shipped_files_and_says_which_directories(home, capsys):
    # Given the files as shipped (with a KM), When checked, Then they pass
    assert check(home) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and str(home / "services" / "km" / "classes") in out


def test_config_check_reports_every_problem_of_every_file_at_once(home, capsys):
    # Given one bad value in each of three files, read by three different daemons
    sh.set_keys(home / WORKER / "admin.cfg", {"port": "-1"})
    sh.set_keys(home / "services/km/classes/km.cfg", {"max_connections": "0"})
    sh.set_keys(home / WORKER / "worker.properties", {"action.max_attempts": "0"})
    # When checked, with --json
    assert check(home, "--json") == 6
    captured = capsys.readouterr()
    # Then all three are reported, on stderr as lines and on stdout as data
    assert captured.err.count("configuration error") == 3
    import json

    problems = json.loads(captured.out)["problems"]
    assert {(os.path.basename(p["file"]), p["key"]) for p in problems} == {
        ("admin.cfg", "port"), ("km.cfg", "max_connections"), ("worker.properties", "action.max_attempts")}
    assert all(p["line"] for p in problems)


def test_the_admin_token_file_is_checked_as_the_admin_daemon_checks_it(home, capsys):
    # Given a token file that others can read
    token = home / "services/worker/run/admin.token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("x" * 40 + "\n")
    os.chmod(token, 0o644)
    # When checked, Then it is refused as ssh refuses a key
    assert check(home) == 6
    assert "chmod 600" in capsys.readouterr().err
    # And once private it passes
    os.chmod(token, 0o600)
    assert check(home) == 0


def test_km_client_ssl_without_its_files_is_refused_alike_at_start_and_by_the_client(home):
    # Given ssl = true in the KM client's file, and no certificate files named
    path = home / WORKER / "enstratus-km-client.cfg"
    sh.set_keys(path, {"ssl": "true"})
    # When the daemons load their settings, Then they refuse it before starting, naming each
    # missing key at the ssl line
    with pytest.raises(ConfigError) as at_start:
        from enstratus_workers.layout import Layout

        load_settings(Layout(home))
    problems = [(e.key, e.line) for e in getattr(at_start.value, "errors", [at_start.value])]
    assert problems == [(key, line_of(path, "ssl")) for key in ("ca_file", "cert_file", "key_file")]
    # And a KM client handed such settings anyway refuses them for the same reason
    from enstratus_workers.km.client import KMClient

    with pytest.raises(ConfigError) as at_connect:
        KMClient(KMClientSettings(ssl=True, source=path), Secret(bytes(32)))
    assert "is required when ssl = true" in str(at_start.value)
    assert "is required when ssl = true" in str(at_connect.value)
    # And ssl = false needs none of them
    sh.set_keys(path, {"ssl": "false"})
    assert check(home) == 0


def test_a_worker_pool_the_config_accepts_is_one_the_admin_api_accepts(home):
    # Given the largest pool worker.properties accepts
    from enstratus_workers.layout import Layout

    sh.set_keys(home / WORKER / "worker.properties", {"worker.default.max": limits.MAX_PROCESSES})
    pool = load_settings(Layout(home)).worker.types[0]
    # When the admin API is given the same bounds, Then it accepts them; one more it refuses
    from pydantic import ValidationError

    from enstratus_workers.admin.models import Concurrency

    assert Concurrency(min=pool.min, max=pool.max).max == limits.MAX_PROCESSES
    with pytest.raises(ValidationError):
        Concurrency(min=0, max=limits.MAX_PROCESSES + 1)


def test_schedules_are_checked_against_the_registry_given(home):
    # Given a schedule of a plug-in action, When checked with a registry that has it, Then it passes;
    # with one that lacks it, Then it is the one problem
    from enstratus_workers.actions import Registry
    from enstratus_workers.layout import Layout

    sh.set_keys(home / WORKER / "worker.properties", {"schedule.firewall.sync.interval": 15})
    with_plugin = Registry()
    for name in ("server.sync", "firewall.sync"):
        with_plugin.register(name, lambda arguments, context: None)
    assert check_config(Layout(home), registry=with_plugin) == []
    without = Registry()
    without.register("server.sync", lambda arguments, context: None)
    assert [p.key for p in check_config(Layout(home), registry=without)] == ["schedule.firewall.sync.interval"]
