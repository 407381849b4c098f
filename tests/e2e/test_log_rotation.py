"""Rotated logs, through the real service and its KM (embedded default, two worker processes):
after the log files are renamed and the processes get SIGHUP, no process of the service still
holds a renamed file (seen in ``/proc/<pid>/fd``), each one's stdout, stderr and log handler
are on the new file at the old path, the subscriber passes SIGHUP on to its workers, nothing was
restarted, a running action finishes, and a worker's stderr lands in its new file. Once by hand
(rename, then SIGHUP), once with the shipped logrotate policy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests import servicehome as sh
from tests.conftest import unavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WORKERS = 2
POLICY = sh.REPO / "etc" / "logrotate.d" / "enstratus-workers"


@pytest.fixture
def home(tmp_path):
    """A scratch install with its KM, both started, every worker process up; stopped after."""
    home = sh.make_home(tmp_path, worker_props={"worker.default.min": WORKERS, "worker.default.max": WORKERS})
    sh.add_km(home)
    try:
        r = sh.km_init(home, "start")
        assert r.returncode == 0, r.stdout + r.stderr
        r = sh.init(home, "start")
        assert r.returncode == 0, r.stdout + r.stderr
        assert sh.wait_until(lambda: len(workers(home)) == WORKERS, 30), pid_files(home)
        yield home
    finally:
        sh.init(home, "stop")
        sh.km_init(home, "stop")
        sh.kill_strays(home)


def pid_files(home: Path) -> dict[int, Path]:
    """pid -> its log file, for every pid file of the install (daemons, worker processes, KM)."""
    found = {}
    for run in (home / "services/worker/run", home / "services/km/run"):
        for pf in run.glob("*.pid"):
            first = pf.read_text().split("\n", 1)[0].strip()
            if first.isdigit():
                found[int(first)] = run.parent / "log" / f"{pf.stem}.log"
    return found


def workers(home: Path) -> dict[int, Path]:
    return {pid: log for pid, log in pid_files(home).items() if log.name.startswith("worker@")}


def pid_of(home: Path, daemon: str) -> int:
    return next(pid for pid, log in pid_files(home).items() if log.name.startswith(f"{daemon}@"))


def open_files(pid: int) -> dict[int, str]:
    """fd -> what it is open on, from ``/proc/<pid>/fd`` (a renamed file shows its new name)."""
    fds = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            fds[int(entry.name)] = os.readlink(entry)
        except OSError:
            continue   # closed meanwhile
    return fds


def misplaced(home: Path, pids: dict[int, Path] | None = None) -> list[str]:
    """What is wrong with where processes write: any of them holding a rotated (renamed) log,
    or whose stdout, stderr or log handler is not on its log file at its path; empty when all is
    well. ``pids``: pid -> log file (default: every pid file's process, and any other process of
    the service must hold no rotated log either)."""
    wrong = []
    if pids is None:
        pids = pid_files(home)
        wrong += [w for pid in sh.our_processes(home) if pid not in pids for w in rotated_held(pid)]
    for pid, log in pids.items():
        wrong += rotated_held(pid)
        fds = open_files(pid)
        for fd in (1, 2):
            if fds.get(fd) != str(log):
                wrong.append(f"pid {pid} fd {fd} on {fds.get(fd)}, not {log}")
        if list(fds.values()).count(str(log)) < 3:   # fds 1, 2 and the log handler's own
            wrong.append(f"pid {pid}: its log handler is not on {log}")
    return wrong


def rotated_held(pid: int) -> list[str]:
    return [f"pid {pid} fd {fd} still on {target}" for fd, target in open_files(pid).items()
            if "/log/" in target and not target.endswith(".log")]


def rename_logs(home: Path, suffix: str) -> list[Path]:
    """Rename every log file as logrotate does; returns the renamed files."""
    renamed = []
    for log in [*home.glob("services/worker/log/*.log"), *home.glob("services/km/log/*.log")]:
        log.rename(log.with_name(log.name + suffix))
        renamed.append(log.with_name(log.name + suffix))
    return renamed


def submit(home: Path, action: str, arguments: dict) -> int:
    r = sh.cli(home, "submit", action, "--args", json.dumps(arguments), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["job_id"]


def job(home: Path, job_id: int) -> dict:
    return json.loads(sh.cli(home, "job", str(job_id), "--json").stdout)


def finished(home: Path, job_id: int) -> dict | None:
    row = job(home, job_id)
    return row if row["status"] not in ("pending", "queued", "running") else None


def test_sighup_after_a_rename_moves_every_process_of_the_service_to_its_new_log(home):
    # Given the service and the KM running, each process writing its streams to its own log
    before = pid_files(home)
    assert {log.name.split("@")[0] for log in before.values()} == {
        "publisher", "subscriber", "pinger", "admin", "worker", "km"}
    assert misplaced(home) == []
    # ... and an action running
    running = submit(home, "sleep", {"seconds": 3})
    assert sh.wait_until(lambda: job(home, running)["status"] == "running", 20), job(home, running)

    # When the logs are renamed and only the subscriber gets SIGHUP (systemctl reload)
    rename_logs(home, ".1")
    os.kill(pid_of(home, "subscriber"), signal.SIGHUP)
    # Then it passed the SIGHUP on: the subscriber and each worker moved to their new files
    moved = {pid: log for pid, log in before.items() if log.name.startswith(("subscriber@", "worker@"))}
    assert sh.wait_until(lambda: misplaced(home, moved) == [], 20), misplaced(home, moved)
    subscriber_log = before[pid_of(home, "subscriber")]
    assert f"passed SIGHUP on to {WORKERS} worker process(es)" in subscriber_log.read_text()
    for log in workers(home).values():
        assert "SIGHUP: reopened the log file" in log.read_text()

    # When they are renamed again and every pid file's process gets SIGHUP (the logrotate policy)
    rename_logs(home, ".2")
    for pid in pid_files(home):
        os.kill(pid, signal.SIGHUP)
    # Then no process of the service holds a renamed file, and all write to the new paths
    assert sh.wait_until(lambda: misplaced(home) == [], 20), misplaced(home)
    # And nothing was stopped or restarted, and the action that was running finished once
    assert pid_files(home) == before
    done = sh.wait_until(lambda: finished(home, running), 30)
    assert done and done["status"] == "succeeded" and done["attempts"] == 1, done
    # And a job still runs, and what a worker writes to its stderr lands in its new file
    line_job = submit(home, "test.append", {"path": "/dev/stderr"})
    done = sh.wait_until(lambda: finished(home, line_job), 30)
    assert done and done["status"] == "succeeded", done
    line = f"{line_job} 1\n"
    assert any(line in log.read_text() for log in workers(home).values())
    rotated = [*home.glob("services/*/log/*.log.1"), *home.glob("services/*/log/*.log.2")]
    assert rotated and not any(line in r.read_text() for r in rotated)


def test_the_shipped_logrotate_policy_rotates_the_running_service(home, tmp_path):
    if shutil.which("logrotate") is None:
        unavailable("logrotate is not installed")
    # Given the policy filled in for this install root, as make install does
    conf = tmp_path / "enstratus-workers.logrotate"
    conf.write_text(POLICY.read_text().replace("@ENSTRATUS_HOME@", str(home)))
    conf.chmod(0o644)
    before = pid_files(home)
    assert sh.submit_wait(home, "echo", {"before": "rotation"})["status"] == "succeeded"

    # When logrotate rotates twice (forced: the logs are young)
    for _ in range(2):
        r = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sh.wait_until(lambda: misplaced(home) == [], 20), misplaced(home)
        assert sh.submit_wait(home, "echo", {"after": "rotation"})["status"] == "succeeded"
        # each new file holds its "SIGHUP: reopened" line: the next round has something to rotate
        assert sh.wait_until(lambda: all(log.exists() and log.stat().st_size for log in before.values()), 20)

    # Then the previous round is compressed, the last one not yet (delaycompress), for every log
    for log in before.values():
        assert log.with_name(log.name + ".1").exists(), sorted(p.name for p in log.parent.iterdir())
        assert log.with_name(log.name + ".2.gz").exists(), sorted(p.name for p in log.parent.iterdir())
    # And every process writes to its new file, none was restarted, and jobs run
    assert misplaced(home) == []
    assert pid_files(home) == before
    assert sh.submit_wait(home, "echo", {"after": "two rotations"})["status"] == "succeeded"
