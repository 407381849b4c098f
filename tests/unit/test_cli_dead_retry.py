"""``dead retry`` gives dead jobs another round of attempts (the lifecycle's re-drive), on the
embedded databases and transport; a job that is not dead is left alone."""

from __future__ import annotations

import json

from enstratus_workers import cli
from enstratus_workers.config import load_settings
from enstratus_workers.db import NewJob, open_databases
from enstratus_workers.db.schema import jobs as T
from enstratus_workers.jobs import lifecycle
from enstratus_workers.layout import Layout
from tests import servicehome as sh


def test_dead_retry_re_drives_only_dead_jobs_with_another_round(tmp_path, capsys):
    # Given a job dead after 3 attempts, and one that succeeded
    home = sh.make_home(tmp_path)
    layout = Layout(home)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        dead, done = (dbs.jobs.submit(NewJob("echo", "{}", "default", 3))[0].job_id for _ in range(2))
        with dbs.provisioning.begin() as conn:
            conn.execute(T.update().where(T.c.job_id == dead).values(status="dead", attempts=3))
            conn.execute(T.update().where(T.c.job_id == done).values(status="succeeded", attempts=1))
    finally:
        dbs.close()
    # When the operator re-drives both
    code = cli.main(["--home", str(home), "dead", "retry", str(dead), str(done), "--json"])
    # Then only the dead one is pending again, with worker.max_attempts more attempts
    assert code == 0 and json.loads(capsys.readouterr().out) == [dead]
    dbs = open_databases(settings.worker, layout)
    try:
        again, left = dbs.jobs.get(dead), dbs.jobs.get(done)
    finally:
        dbs.close()
    assert (again.status, again.attempts) == ("pending", 3)
    assert again.max_attempts == lifecycle.redrive_max_attempts(3, settings.worker.max_attempts)
    assert left.status == "succeeded"
    # and naming no dead job is a failure
    assert cli.main(["--home", str(home), "dead", "retry", str(done)]) == cli.EXIT_FAILED
