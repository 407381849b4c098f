"""Schedule slots are idempotency keys: accounts that differ only in case or accent each get
their own job per slot on MariaDB too (exact identity columns); one with a trailing space is no
account name (``limits.ACCOUNT_RULE``: MariaDB's PAD SPACE would take it for the other) and gets
none."""

from __future__ import annotations

from dataclasses import replace

from enstratus_workers.config.settings import Secret
from enstratus_workers.daemons.publisher.schedules import Scheduler, job_key, slot_of
from enstratus_workers.db import open_databases
from enstratus_workers.layout import Layout
from tests.unit.test_schedules import T0, home, make_settings, scheduled, store  # noqa: F401


def test_accounts_differing_in_case_get_one_slot_each_on_mariadb(mysql_url, tmp_path, store):  # noqa: F811 (fixture)
    # Given a minute schedule over accounts "acme", "ACME", "acmé" and "acme ", on MariaDB
    accounts = ("acme", "ACME", "acmé")
    settings = make_settings(tmp_path, schedule_accounts=accounts + ("acme ",))
    settings = replace(settings, worker=replace(settings.worker, schedules=settings.worker.schedules[:1],
                                                provisioning_url=Secret(mysql_url),
                                                analytics_url=Secret(mysql_url)))
    dbs = open_databases(settings.worker, Layout(tmp_path))
    try:
        # When the scheduler ticks at the start of a slot, and again within it
        created = Scheduler(settings, Layout(tmp_path), dbs, store).tick(T0 + 1)
        again = Scheduler(settings, Layout(tmp_path), dbs, store).tick(T0 + 2)
        # Then every account got its own job, keyed by its exact name, and only one; the
        # trailing-space one none
        assert (created, again) == (3, 0)
        slot = slot_of(T0 + 1, 60.0)
        assert sorted(j["idempotency_key"] for j in scheduled(dbs)) == sorted(
            job_key("server.sync", a, slot) for a in accounts)
        assert sorted(j["arguments"]["account"] for j in scheduled(dbs)) == sorted(accounts)
        assert sorted(j["account"] for j in scheduled(dbs)) == sorted(accounts)
    finally:
        dbs.close()
