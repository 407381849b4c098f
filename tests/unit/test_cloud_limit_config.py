"""The ``cloud.*`` keys of worker.properties: the cloud API limits' rates, validated as the daemons do."""

from __future__ import annotations

import pytest

from enstratus_workers import cli
from enstratus_workers.config import load_settings
from enstratus_workers.config.settings import CloudRate
from enstratus_workers.layout import Layout
from tests import servicehome as sh


def _home(tmp_path, keys: dict):
    home = sh.make_home(tmp_path)
    path = home / "services/worker/classes/worker.properties"
    sh.set_keys(path, keys)
    return home, path


def test_the_most_specific_rate_wins_and_fractions_are_taken(tmp_path):
    # Given a default rate, one for a provider and one for an account of it (with a dot in it)
    home, _ = _home(tmp_path, {"cloud.rate": 4, "cloud.rate.ec2": 2.5, "cloud.rate.ec2.acme.eu": 0.5,
                               "cloud.max_wait": 0, "cloud.recover_after": 1.5})
    # When the settings are loaded
    cloud = load_settings(Layout(home)).cloud
    # Then each key gets the rate of its most specific entry
    assert cloud.rates == (CloudRate("ec2", None, 2.5), CloudRate("ec2", "acme.eu", 0.5))
    assert (cloud.rate_for("ec2", "acme.eu"), cloud.rate_for("ec2", "42"), cloud.rate_for("local", "42")) == (0.5, 2.5, 4)
    assert (cloud.max_wait, cloud.recover_after) == (0, 1.5)


def test_the_shipped_file_states_the_defaults(tmp_path):
    home, _ = _home(tmp_path, {})
    cloud = load_settings(Layout(home)).cloud
    assert (cloud.rate, cloud.rates, cloud.max_wait, cloud.recover_after) == (10, (), 5, 10)


@pytest.mark.parametrize("key, value, says", [
    ("cloud.rate", "0", "out of range: must be greater than 0"),
    ("cloud.rate", "-2", "out of range"),
    ("cloud.rate", "fast", "'fast' is not a number"),
    ("cloud.rate.ec2", "0", "out of range: must be greater than 0"),
    ("cloud.rate.ec2.42", "nan", "'nan' is not a number"),
    ("cloud.rate.ec2.42", "-0.5", "out of range"),
    ("cloud.rate.EC2", "2", "'EC2' is not a provider name"),
    ("cloud.max_wait", "-1", "out of range"),
    ("cloud.max_wait", "400", "must be less than action.time_limit (300)"),
    ("cloud.recover_after", "0", "out of range"),
])
def test_a_bad_rate_or_bound_fails_config_check_naming_file_key_and_line(tmp_path, capsys, key, value, says):
    # Given the shipped files but for one cloud key
    home, path = _home(tmp_path, {key: value})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(key + " "))
    # When the operator runs config check / Then it exits 6, naming the file, line, key and why
    code = cli.main(["--home", str(home), "config", "check"])
    err = capsys.readouterr().err
    assert code == 6 and f"worker.properties:{line}, key '{key}'" in err and says in err, err


def test_a_daemon_refuses_to_start_on_a_bad_rate(tmp_path):
    # Given a rate of zero / When the service is started / Then it exits 6 naming the key
    home, _ = _home(tmp_path, {"cloud.rate.local": "0"})
    try:
        r = sh.init(home, "start")
        assert r.returncode == 6 and "key 'cloud.rate.local'" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        sh.init(home, "stop")
        sh.kill_strays(home)
