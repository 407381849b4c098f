"""The per-daemon groups of worker.properties: Settings.publisher, .subscriber and .pinger."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from enstratus_workers.config import describe, load_settings
from enstratus_workers.config.settings import (CloudLimitSettings, PingerSettings, PublisherSettings, Schedule,
                                               SubscriberSettings, WorkerSettings, WorkerType)
from enstratus_workers.layout import Layout

KEY = base64.b64encode(bytes(range(32))).decode()
GROUPS = ("publisher", "subscriber", "pinger", "cloud")


@pytest.fixture
def layout(tmp_path) -> Layout:
    layout = Layout(tmp_path)
    layout.classes_dir.mkdir(parents=True)
    prov = layout.classes_dir / "enstratus-provisioning.cfg"
    prov.write_text(f"ENCRYPTION_KEY = {KEY}\n")
    prov.chmod(0o600)
    return layout


def test_each_group_carries_the_values_of_the_file(layout):
    # Given a worker.properties that sets every daemon's knobs away from their defaults
    (layout.classes_dir / "worker.properties").write_text(
        "publisher.poll_interval = 0.5\npublisher.batch = 50\n"
        "schedule.server.sync.interval = 30\nschedule.accounts = 7\n"
        "worker.types = default, launcher\nworker.launcher.queues = launch, sync\n"
        "subscriber.record_batch = 20\nsubscriber.record_interval = 0.1\nworker.grace_period = 5\n"
        "worker.max_tasks_per_child = 9\nworker.max_memory_mb = 256\n"
        "pinger.heartbeat_interval = 4\npinger.guest_interval = 6\npinger.guest_misses = 2\n"
        "pinger.guest_concurrency = 10\npinger.guest_timeout = 1\n")
    # When it is loaded
    s = load_settings(layout)
    # Then each daemon's group holds that daemon's values
    assert s.publisher == PublisherSettings(0.5, 50, (Schedule("server.sync", 30.0),), ("7",))
    assert s.subscriber == SubscriberSettings(
        (WorkerType("default", ("default",), 2, 2), WorkerType("launcher", ("launch", "sync"), 1, 1)),
        20, 0.1, 5.0, 9, 256)
    assert s.subscriber.all_queues == s.worker.all_queues == ("default", "launch", "sync")
    assert s.pinger == PingerSettings(4.0, 6.0, 2, 10, 1.0)
    # and they are the same objects on every read, and frozen
    assert s.publisher is s.publisher
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.pinger.guest_interval = 1.0


def test_without_a_file_the_groups_hold_the_defaults(layout):
    s = load_settings(layout)
    w = WorkerSettings()
    assert s.publisher == PublisherSettings.of(w)
    assert (s.publisher.batch, s.subscriber.grace_period, s.pinger.heartbeat_interval) == (
        w.publisher_batch, w.grace_period, w.heartbeat_interval)


def _distinct(value):
    """A value of the same kind as ``value`` that compares unequal to it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value[:-1] if value else ("x",)
    return object()


def test_a_daemons_group_holds_nothing_of_another_daemons():
    # Given the groups of the default table
    base = WorkerSettings()
    groups = {name: cls.of(base) for name, cls in
              (("publisher", PublisherSettings), ("subscriber", SubscriberSettings), ("pinger", PingerSettings),
               ("cloud", CloudLimitSettings))}
    owners: dict[str, list[str]] = {}
    for f in dataclasses.fields(WorkerSettings):
        # When one field of worker.properties changes
        changed = dataclasses.replace(base, **{f.name: _distinct(getattr(base, f.name))})
        owners[f.name] = [name for name, g in groups.items() if type(g).of(changed) != g]
    # Then at most one daemon's group follows it
    assert all(len(o) <= 1 for o in owners.values()), owners
    # and each group follows exactly its daemon's knobs; the shared ones are in none
    by_group = {name: {k for k, o in owners.items() if o == [name]} for name in GROUPS}
    assert by_group == {
        "publisher": {"publisher_poll_interval", "publisher_batch", "publisher_window", "account_weights",
                      "schedules", "schedule_accounts"},
        "subscriber": {"types", "record_batch", "record_interval", "grace_period",
                       "max_tasks_per_child", "max_memory_mb", "cancel_grace"},
        "pinger": {"heartbeat_interval", "guest_interval", "guest_misses", "guest_concurrency",
                   "guest_timeout", "retention_succeeded", "retention_failed", "retention_dead",
                   "retention_events", "retention_cancelled", "retention_audit"},
        "cloud": {"cloud_rate", "cloud_rates", "cloud_max_wait", "cloud_recover_after"},
    }
    assert {k for k, o in owners.items() if not o} == {
        "provisioning_url", "analytics_url", "default_queue", "time_limit", "max_attempts", "source",
        "host_name", "host_tags"}


def test_a_new_worker_table_makes_new_groups_and_describe_shows_the_file_table_only(layout):
    # Given loaded settings whose groups were read once
    s = load_settings(layout)
    assert s.subscriber.types == WorkerSettings().types
    # When the worker table is replaced (as the admin daemon does with the instances' types)
    t = dataclasses.replace(s, worker=dataclasses.replace(s.worker, types=(WorkerType("x", ("q",)),)))
    # Then the new settings' group follows it and the old one is unchanged
    assert t.subscriber.types == (WorkerType("x", ("q",)),)
    assert s.subscriber.types == WorkerSettings().types
    # and describe (config check --json) shows the files' tables, not the derived groups
    assert not set(describe(t)) & set(GROUPS)
