"""End to end: ``pinger check`` thresholds against the running service (embedded, and RabbitMQ +
MariaDB), through the bin script a monitoring system runs."""

from __future__ import annotations

import subprocess

import pytest

from tests import servicehome as sh
from tests.unit.test_pinger_check_plugin import perfdata

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PINGER = sh.REPO / "services" / "worker" / "bin" / "pinger"


def pinger_check(home, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(PINGER), "check", *args], env=sh.env_for(home), capture_output=True,
                          text=True, timeout=60, check=False)


def test_thresholds_judge_the_running_service_and_ride_in_its_perfdata(service_home):
    home = service_home
    # Given the running service, healthy
    r = sh.init(home, "start")
    assert r.returncode == 0, r.stdout + r.stderr
    limits = ("-w", "100", "-c", "200", "--lag-warning", "60", "--lag-critical", "300", "-t", "30")
    ok = sh.wait_until(lambda: (c := pinger_check(home, *limits)).returncode == 0 and c, 30)
    assert ok, pinger_check(home, *limits).stdout
    # Then the line parses by the guidelines' grammar and every depth and the lag carry their ranges
    perf = perfdata(ok.stdout.rstrip("\n"))
    depths = {label: p for label, p in perf.items() if label.startswith("queue_") and label.endswith("_ready")}
    assert "queue_default_ready" in depths
    assert {(p["warn"], p["crit"], p["min"]) for p in depths.values()} == {("100", "200", "0")}
    assert (perf["lag"]["uom"], perf["lag"]["warn"], perf["lag"]["crit"]) == ("s", "60", "300")
    assert float(perf["lag"]["value"]) < 60

    # When a range says the depth it has is a warning, and the lag it has is critical
    warned = pinger_check(home, "-w", "@0:")
    critical = pinger_check(home, "-w", "@0:", "--lag-critical", "@0:")
    # Then the states follow, naming what alerted
    assert warned.returncode == 1, warned.stdout
    assert warned.stdout.startswith("ENSTRATUS-WORKERS WARNING - ")
    assert "queue default depth" in warned.stdout and "(warning: at least 0)" in warned.stdout
    assert critical.returncode == 2, critical.stdout
    assert "(critical: at least 0)" in critical.stdout and critical.stdout.count("|") == 1

    r = sh.init(home, "stop")
    assert r.returncode == 0, r.stdout + r.stderr
