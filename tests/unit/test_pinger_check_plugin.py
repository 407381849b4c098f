"""``pinger check`` as the Monitoring Plugins guidelines want a plugin: exit 3 on usage errors,
``-w``/``-c`` and ``--lag-warning``/``--lag-critical`` ranges carried in the perfdata, ``-t``,
``-V``, and a line whose perfdata no problem text can break."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import closing

import pytest

from enstratus_workers import __version__
from enstratus_workers.config import load_settings
from enstratus_workers.config.settings import WorkerSettings
from enstratus_workers.daemons.pinger import plugin
from enstratus_workers.daemons.pinger.health import (
    SECONDS,
    Health,
    _check_mq,
    check_heartbeats,
    perf_label,
    waiting_for_s,
)
from enstratus_workers.daemons.pinger.thresholds import Range, Threshold
from enstratus_workers.db import now_ms, open_databases, schema
from enstratus_workers.db.jobs import NewJob
from enstratus_workers.errors import (
    CHECK_CRITICAL,
    CHECK_OK,
    CHECK_UNKNOWN,
    CHECK_WARNING,
)
from enstratus_workers.layout import Layout
from enstratus_workers.mq import OutgoingMessage, open_transport
from tests import servicehome as sh

# The guidelines' grammar: 'label'=value[UOM];[warn];[crit];[min];[max], pairs separated by spaces.
NUM = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
RANGE = rf"@?(?:(?:~|{NUM})?:)?(?:{NUM})?"
LABEL = r"'(?:[^'=]|'')+'|[^'=\s|]+"
UOM = r"(?:s|ms|us|%|B|KB|MB|TB|c)?"
PAIR = rf"(?:{LABEL})={NUM}{UOM}(?:;{RANGE}(?:;{RANGE}(?:;(?:{NUM})?(?:;(?:{NUM})?)?)?)?)?"
PAIR_PARTS = re.compile(rf"(?P<label>{LABEL})=(?P<value>{NUM})(?P<uom>{UOM})"
                        rf"(?:;(?P<warn>{RANGE})(?:;(?P<crit>{RANGE})(?:;(?P<min>{NUM})?(?:;(?P<max>{NUM})?)?)?)?)?")
LINE = re.compile(rf"ENSTRATUS-WORKERS (?:OK|WARNING|CRITICAL|UNKNOWN) - (?P<text>[^|\r\n]*)"
                  rf"(?: \| (?P<perf>{PAIR}(?: {PAIR})*))?")


def perfdata(line: str) -> dict[str, dict]:
    """The perfdata of a plugin line by the guidelines' grammar, by label; fails if it does not parse."""
    m = LINE.fullmatch(line)
    assert m, f"not a plugin line by the guidelines' grammar: {line!r}"
    pairs = {}
    for p in PAIR_PARTS.finditer(m["perf"] or ""):
        label = p["label"][1:-1].replace("''", "'") if p["label"].startswith("'") else p["label"]
        pairs[label] = p.groupdict()
    return pairs


def run_main(capsys, *argv) -> tuple[int, str]:
    code = plugin.main(list(argv))
    return code, capsys.readouterr().out


# --- usage, -V, -h -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--bogus"], ["-w", "20:10"], ["-c", "abc"], ["--lag-warning", ""],
                                  ["-w"], ["-t", "0"], ["-t", "-1"], ["-t", "soon"], ["-t", "nan"],
                                  ["-t", "99999"], ["stray"]])
def test_a_usage_error_is_unknown_with_the_reason_on_stdout(capsys, argv):
    code, out = run_main(capsys, *argv)
    assert code == CHECK_UNKNOWN
    first, usage = out.splitlines()[0], out.splitlines()[1]
    assert first.startswith("ENSTRATUS-WORKERS UNKNOWN - pinger check: ") and usage.startswith("usage: pinger check")


def test_pinger_check_bogus_from_the_bin_script_exits_3(tmp_path):
    home = sh.make_home(tmp_path)
    r = subprocess.run([str(sh.REPO / "services" / "worker" / "bin" / "pinger"), "check", "--bogus"], check=False,
                       env=sh.env_for(home), capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert r.stdout.startswith("ENSTRATUS-WORKERS UNKNOWN - pinger check: unrecognized arguments: --bogus")


def test_version_prints_the_plugin_name_and_version_and_exits_0(capsys):
    for flag in ("-V", "--version"):
        assert run_main(capsys, flag) == (0, f"pinger check (enstratus-workers) {__version__}\n")


def test_help_lists_the_plugin_options_and_exits_0(capsys):
    code, out = run_main(capsys, "-h")
    assert code == 0
    for option in ("-w RANGE", "-c RANGE", "--lag-warning RANGE", "--lag-critical RANGE", "-t SECONDS", "-V"):
        assert option in out


# --- ranges, as the guidelines' table defines them -----------------------------------------------

@pytest.mark.parametrize("text, alerting, quiet", [
    ("10", [-1, 10.5, 11], [0, 5, 10]),            # outside 0..10
    ("10:", [-1, 9.9], [10, 11, 1e9]),              # below 10
    ("~:10", [10.1, 11], [-1e9, 0, 10]),            # above 10
    ("10:20", [9, 21], [10, 15, 20]),               # outside 10..20
    ("@10:20", [10, 15, 20], [9, 21]),              # inside 10..20, ends included
])
def test_a_range_alerts_as_the_guidelines_say(text, alerting, quiet):
    r = Range.parse(text)
    assert [v for v in alerting if not r.alerts(v)] == []
    assert [v for v in quiet if r.alerts(v)] == []


def test_a_range_reads_infinities_and_keeps_the_operators_text():
    assert Range.parse("~:10") == Range("~:10", -math.inf, 10.0, False)
    assert Range.parse("10:") == Range("10:", 10.0, math.inf, False)
    assert Range.parse("@-5.5:0") == Range("@-5.5:0", -5.5, 0.0, True)


@pytest.mark.parametrize("text", ["", ":", "@", "20:10", "1:2:3", "ten", "10 ", "~", "10:~"])
def test_what_is_not_a_range_is_refused(text):
    with pytest.raises(ValueError, match="invalid range"):
        Range.parse(text)


# --- thresholds on a health state ------------------------------------------------------------------

def faked_ok_health(depth: int, lag: float) -> Health:
    h = Health()
    h.perf.update({"queue_default_ready": depth, "queue_billing_ready": 0, "workers": 2, "lag": lag})
    h.perf_specs["lag"] = SECONDS  # as check_health measures it
    return h


@pytest.mark.parametrize("argv, depth, lag, code, problem", [
    ([], 150, 900.0, CHECK_OK, None),
    (["-w", "100", "-c", "200"], 99, 0.0, CHECK_OK, None),
    (["-w", "100", "-c", "200"], 150, 0.0, CHECK_WARNING, "queue default depth 150 (warning: outside 0 to 100)"),
    (["-w", "100", "-c", "200"], 250, 0.0, CHECK_CRITICAL, "queue default depth 250 (critical: outside 0 to 200)"),
    (["--lag-warning", "60", "--lag-critical", "300"], 0, 75.5, CHECK_WARNING, "lag 75.5 s (warning: outside 0 to 60)"),
    (["--lag-critical", "~:300"], 0, 301.0, CHECK_CRITICAL, "lag 301.0 s (critical: above 300)"),
    (["-c", "@0:0"], 5, 0.0, CHECK_CRITICAL, "queue billing depth 0 (critical: 0 to 0)"),
])
def test_thresholds_turn_an_ok_health_into_warning_or_critical(argv, depth, lag, code, problem):
    # Given an OK health with these figures, When the thresholds of these options are applied
    args = plugin.parser().parse_args(argv)
    h = faked_ok_health(depth, lag)
    plugin.apply_thresholds(h, Threshold(args.warning, args.critical),
                            Threshold(args.lag_warning, args.lag_critical))
    # Then the state is as the ranges say, naming the value and the range that alerted
    assert h.code == code
    assert h.problems == ([problem] if problem else [])


def test_the_perfdata_parses_by_the_guidelines_and_carries_the_thresholds():
    h = faked_ok_health(150, 75.5)
    plugin.apply_thresholds(h, Threshold(Range.parse("100"), Range.parse("@200:")),
                            Threshold(Range.parse("~:60"), Range.parse("300")))
    perf = perfdata(h.line())
    assert perf["queue_default_ready"] == {
        "label": "queue_default_ready", "value": "150", "uom": "", "warn": "100", "crit": "@200:", "min": "0",
        "max": None}
    assert (perf["queue_billing_ready"]["warn"], perf["queue_billing_ready"]["crit"]) == ("100", "@200:")
    assert (perf["lag"]["value"], perf["lag"]["uom"], perf["lag"]["warn"], perf["lag"]["crit"]) == (
        "75.5", "s", "~:60", "300")
    assert perf["workers"] == {"label": "workers", "value": "2", "uom": "", "warn": None, "crit": None,
                               "min": None, "max": None}  # no threshold: the bare value, as before
    assert h.as_dict()["thresholds"]["lag"] == {"warn": "~:60", "crit": "300"}


def test_perf_labels_with_blanks_equals_or_quotes_are_quoted():
    assert perf_label("queue_default_ready") == "queue_default_ready"
    assert perf_label("queue a b") == "'queue a b'"
    assert perf_label("a=b") == "'a=b'"
    assert perf_label("it's") == "'it''s'"
    assert perf_label("a|b\nc") == "a_b_c"
    h = Health()
    h.perf.update({"queue a b_ready": 1, "it's": 2})
    assert set(perfdata(h.line())) == {"queue a b_ready", "it's"}


# --- a real health state: the DB's write errors and waiting jobs, the queue's depth -----------------

@pytest.fixture
def dbs(tmp_path):
    with closing(open_databases(WorkerSettings(), Layout(tmp_path))) as fresh:
        yield fresh


def test_a_pipe_or_newline_in_a_write_error_leaves_exactly_one_separator(dbs):
    # Given a subscriber whose DB write error text holds "|" and line breaks
    reason = "OperationalError: (1105, 'disk | full')\nretry | later\r\nbye"
    dbs.heartbeats.beat("subscriber", "alpha", ttl_s=30, details={"write_error": reason})
    h = Health()
    h.perf["workers"] = 1
    # When the heartbeats are checked and the line printed
    check_heartbeats(dbs, h)
    line = h.line()
    # Then there is one line, one "|", the reason still readable, and the perfdata intact
    assert h.code == CHECK_CRITICAL
    assert line.count("|") == 1 and "\n" not in line and "\r" not in line
    assert "cannot record outcomes: OperationalError: (1105, 'disk / full') retry / later bye" in line
    assert perfdata(line) == {"workers": {"label": "workers", "value": "1", "uom": "", "warn": None,
                                          "crit": None, "min": None, "max": None}}
    assert h.as_dict()["checks"]["write_errors"] == {"subscriber@alpha": reason}  # JSON keeps it whole


def test_the_lag_is_the_wait_of_the_oldest_waiting_job_and_its_threshold_applies(dbs):
    # Given a job pending for 120 s, one queued for 30 s and one running for an hour
    def job(status, **times):
        j, _ = dbs.jobs.submit(NewJob("echo", "{}", "default", 3))
        with dbs.provisioning.begin() as conn:
            conn.execute(schema.jobs.update().where(schema.jobs.c.job_id == j.job_id)
                         .values(status=status, **times))
    now = now_ms()
    job(schema.PENDING, created_timestamp=now - 120_000)
    job(schema.QUEUED, created_timestamp=now - 200_000, queued_timestamp=now - 30_000)
    job(schema.RUNNING, created_timestamp=now - 3_600_000, start_timestamp=now - 3_600_000)
    # When the lag is measured and the lag thresholds applied
    lag = waiting_for_s(dbs)
    h = Health()
    h.perf["lag"] = round(lag, 1)
    plugin.apply_thresholds(h, Threshold(), Threshold(Range.parse("60"), Range.parse("600")))
    # Then the lag is the pending job's 120 s (the running one waits for nothing), a WARNING
    assert 120 <= lag < 130
    assert h.code == CHECK_WARNING and h.problems[0].startswith(f"lag {h.perf['lag']} s (warning")


def test_a_retried_job_waits_since_its_last_attempt_ended(dbs):
    j, _ = dbs.jobs.submit(NewJob("echo", "{}", "default", 3))
    now = now_ms()
    with dbs.provisioning.begin() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.job_id == j.job_id)
                     .values(created_timestamp=now - 3_600_000, end_timestamp=now - 10_000))
    assert 10 <= waiting_for_s(dbs) < 20
    assert waiting_for_s(dbs) < 3600


def test_a_deferred_job_lags_only_once_its_deferral_is_over(dbs):
    # Given a job its action deferred an hour ago for two hours, relayed (held by the broker)
    j, _ = dbs.jobs.submit(NewJob("echo", "{}", "default", 3))
    now = now_ms()
    with dbs.provisioning.begin() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.job_id == j.job_id).values(
            status=schema.QUEUED, queued_timestamp=now - 3_600_000, not_before_ms=now + 3_600_000))
    # Then it does not lag: it waits on purpose
    assert waiting_for_s(dbs) == 0.0
    # When its deferral ended 10 s ago / Then it lags from then
    with dbs.provisioning.begin() as conn:
        conn.execute(schema.jobs.update().values(not_before_ms=now - 10_000))
    assert 10 <= waiting_for_s(dbs) < 20


def test_a_paused_queue_or_account_does_not_lag_it_waits_for_the_operator(dbs):
    # Given jobs pending for an hour, in a queue and of an account that are both paused
    now = now_ms()
    for queue, account in (("default", None), ("other", "acme")):
        j, _ = dbs.jobs.submit(NewJob("echo", "{}", queue, 3, account=account))
        with dbs.provisioning.begin() as conn:
            conn.execute(schema.jobs.update().where(schema.jobs.c.job_id == j.job_id)
                         .values(created_timestamp=now - 3_600_000))
    with dbs.provisioning.begin() as conn:
        conn.execute(schema.pauses.insert(), [{"kind": "queue", "name": "default", "since_ms": now},
                                              {"kind": "account", "name": "acme", "since_ms": now}])
    # Then there is no lag: neither waits for a worker
    assert waiting_for_s(dbs) == 0.0
    # When the account is resumed / Then its job lags again, from its submit
    with dbs.provisioning.begin() as conn:
        conn.execute(schema.pauses.delete().where(schema.pauses.c.kind == "account"))
    assert 3600 <= waiting_for_s(dbs) < 3700


def test_nothing_waiting_is_no_lag(dbs):
    assert waiting_for_s(dbs) == 0.0


def test_a_depth_threshold_judges_the_depth_the_queue_reports(tmp_path):
    # Given the embedded queue of a scratch install holding 7 ready messages on "default"
    home = sh.make_home(tmp_path)
    layout = Layout(home)
    settings = load_settings(layout)
    with open_transport(settings.mq, layout) as t:
        t.declare(settings.worker.all_queues)
        t.publish([OutgoingMessage("default", b"{}", f"m{i}") for i in range(7)])
    # When the queue is checked and -w 5 -c 10 applied
    h = Health()
    assert _check_mq(settings, layout, h) == "ok"
    plugin.apply_thresholds(h, Threshold(Range.parse("5"), Range.parse("10")), Threshold())
    # Then the 7 ready messages are a WARNING, and the perfdata says so
    assert h.perf["queue_default_ready"] == 7
    assert h.code == CHECK_WARNING and h.problems == ["queue default depth 7 (warning: outside 0 to 5)"]
    assert perfdata(h.line())["queue_default_ready"]["warn"] == "5"


# --- the timeout ---------------------------------------------------------------------------------

def test_the_age_of_this_process_is_read_from_proc():
    # pytest has been running for a while; a process that just started is younger than a second
    assert plugin.process_age_s() > 0.1
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert 0 <= plugin.process_age_s(child.pid) < 5
    finally:
        child.kill()
        child.wait()


def test_within_gives_up_on_a_check_that_does_not_return(capsys):
    started = time.monotonic()
    h = plugin.within(0.3, lambda: time.sleep(30) or Health())
    assert time.monotonic() - started < 5
    assert (h.code, h.line()) == (CHECK_UNKNOWN, "ENSTRATUS-WORKERS UNKNOWN - timed out after 0.3 s")


def test_within_turns_an_unexpected_error_into_unknown_with_its_first_line():
    def broken():
        raise RuntimeError("first | line\nsecond line")
    h = plugin.within(5, broken)
    assert h.code == CHECK_UNKNOWN
    assert h.line() == "ENSTRATUS-WORKERS UNKNOWN - cannot check: RuntimeError: first / line"


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections (the kernel's backlog) and never says a word: a hung
    broker or database as a client sees one."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("hung", ["broker", "database"])
def test_the_timeout_bounds_a_check_whose_broker_or_database_does_not_answer(tmp_path, silent_server, hung):
    # Given an install whose broker (or provisioning database) accepts connections but never answers
    url = f"mysql+pymysql://nobody@127.0.0.1:{silent_server}/provisioning"
    home = sh.make_home(tmp_path, mysql_url=url if hung == "database" else None)
    if hung == "broker":
        sh.set_keys(home / "services" / "worker" / "classes" / "mq.cfg",
                    {"transport": "amqp", "host": "127.0.0.1", "port": silent_server})
    # When pinger check runs with -t 2 (each client alone would wait 10 s)
    started = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "enstratus_workers.daemons.pinger", "check",
                           "--home", str(home), "-t", "2"], env={**os.environ, "ENSTRATUS_HOME": str(home)},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()
            said_at_age = plugin.process_age_s(proc.pid)  # not reaped yet: /proc still has it
            code = proc.wait(timeout=30)
            ended_after = time.monotonic() - started
            errors = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    # Then it says UNKNOWN, timed out, 2 s after the process started (loading Python counts too),
    # and the process ends soon after, though the client is still waiting for its answer
    assert (code, line) == (3, "ENSTRATUS-WORKERS UNKNOWN - timed out after 2 s\n"), errors
    assert 2 <= said_at_age < 2.5, said_at_age
    assert ended_after < 8, ended_after
