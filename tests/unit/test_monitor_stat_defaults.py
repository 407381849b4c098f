"""``Stat.get_all()`` and ``Stat.get(cluster_id)`` called as django-q users call them, with no
settings or layout: they read the install ``ENSTRATUS_HOME`` names, else the checkout."""

from __future__ import annotations

import os

import pytest

import enstratus_workers.layout as layout_module
from enstratus_workers.config import ConfigError, load_settings
from enstratus_workers.db import open_databases
from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.monitor import Stat
from tests import servicehome as sh


def scratch_install(tmp_path, subscriber: str):
    """A scratch install root with one subscriber beating in its provisioning DB."""
    home = sh.make_home(tmp_path)
    layout = Layout(home)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        dbs.heartbeats.beat("subscriber", subscriber, ttl_s=30,
                            details={"workers": [{"name": "default.1", "pid": 4242, "state": "idle"}]})
    finally:
        dbs.close()
    return home, settings, layout


def test_with_enstratus_home_set_stat_reads_that_install(tmp_path, monkeypatch):
    # Given an install with subscriber "alpha", named by ENSTRATUS_HOME
    home, _, _ = scratch_install(tmp_path, "alpha")
    monkeypatch.setenv("ENSTRATUS_HOME", str(home))
    cluster_id = f"subscriber@alpha@{short_hostname()}"
    # When the clusters are asked for with no arguments
    stats = Stat.get_all()
    # Then that install's subscriber is the one cluster, and get finds it by id, name and pid
    assert [s.cluster_id for s in stats] == [cluster_id]
    assert Stat.get(cluster_id).workers == [4242]
    assert Stat.get("alpha").cluster_id == cluster_id
    assert Stat.get(os.getpid()).cluster_id == cluster_id
    assert Stat.get(os.getpid() + 1) is None
    assert Stat.get("subscriber@nope@nowhere") is None


def test_without_enstratus_home_stat_reads_the_checkout(tmp_path, monkeypatch):
    # Given no ENSTRATUS_HOME, and the checkout (where the package sits) an install with "beta";
    # the module's checkout path is pointed at a scratch copy so the real checkout stays untouched
    home, _, _ = scratch_install(tmp_path, "beta")
    monkeypatch.delenv("ENSTRATUS_HOME", raising=False)
    monkeypatch.setattr(layout_module, "_CHECKOUT", home)
    # When the clusters are asked for with no arguments
    stats = Stat.get_all()
    # Then the checkout's subscriber is found
    assert [s.name for s in stats] == ["beta"]
    assert Stat.get(f"subscriber@beta@{short_hostname()}").name == "beta"


def test_explicit_settings_and_layout_win_over_enstratus_home(tmp_path, monkeypatch):
    # Given ENSTRATUS_HOME naming install "one", and another install "two"
    one, _, _ = scratch_install(tmp_path / "a", "one")
    _, settings, layout = scratch_install(tmp_path / "b", "two")
    monkeypatch.setenv("ENSTRATUS_HOME", str(one))
    # When "two" is passed: as settings and layout, as settings alone, as layout alone
    # Then "two" is read each time
    assert [s.name for s in Stat.get_all(settings, layout)] == ["two"]
    assert [s.name for s in Stat.get_all(settings)] == ["two"]
    assert [s.name for s in Stat.get_all(layout=layout)] == ["two"]
    assert Stat.get("two", layout=layout).name == "two"
    assert Stat.get("one", layout=layout) is None


def test_a_bad_config_in_the_defaulted_install_is_a_config_error(tmp_path, monkeypatch):
    # Given ENSTRATUS_HOME naming an install whose worker.properties holds an unknown key
    home, _, _ = scratch_install(tmp_path, "alpha")
    sh.set_keys(home / "services" / "worker" / "classes" / "worker.properties", {"worker.typos": "x"})
    monkeypatch.setenv("ENSTRATUS_HOME", str(home))
    # When the clusters are asked for, Then the error names the key, as the daemons would
    with pytest.raises(ConfigError, match="worker.typos"):
        Stat.get_all()
