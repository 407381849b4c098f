"""The systemd units in etc/systemd/: hardened (``systemd-analyze security`` exposure at most 4.0),
run as the service account, ready by sd_notify, and the subscriber stopped in its own order."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from enstratus_workers.config.settings import WorkerSettings
from enstratus_workers.layout import Layout
from enstratus_workers.runtime.runner import STOP_MARGIN
from tests.conftest import unavailable

UNITS = Path(__file__).resolve().parents[2] / "etc" / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
MAX_EXPOSURE = 4.0
# what the install step puts in place of the placeholders
INSTALL = {"@ENSTRATUS_USER@": "enstratus", "@ENSTRATUS_HOME@": "/opt/enstratus"}


def render(unit: Path, into: Path) -> Path:
    text = unit.read_text()
    for placeholder, value in INSTALL.items():
        text = text.replace(placeholder, value)
    assert "@ENSTRATUS_" not in text, f"{unit.name}: a placeholder the install does not fill"
    out = into / unit.name
    out.write_text(text)
    return out


def service_section(unit: Path) -> dict[str, list[str]]:
    """Every key of [Service] with all its values (systemd keys repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.fixture(scope="module")
def systemd_analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        unavailable("systemd-analyze is not installed: the units' exposure cannot be measured")
    return path


def test_the_units_are_the_four_daemons_and_the_km():
    assert [u.name for u in SERVICES] == [
        "enstratus-km.service", "enstratus-workers-admin.service", "enstratus-workers-pinger.service",
        "enstratus-workers-publisher.service", "enstratus-workers-subscriber.service"]


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_exposure_is_at_most_4(unit, systemd_analyze, tmp_path):
    # Given the unit as the install writes it
    rendered = render(unit, tmp_path)
    # When systemd rates it
    r = subprocess.run([systemd_analyze, "security", "--offline=yes", str(rendered)],
                       check=False, capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert found, r.stdout + r.stderr
    # Then it is at most 4.0 ("OK" in systemd's words; the units without hardening rated 9.6)
    assert float(found.group(1)) <= MAX_EXPOSURE, r.stdout


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_each_daemon_runs_as_the_account_notifies_and_writes_only_its_dirs(unit, tmp_path):
    s = service_section(render(unit, tmp_path))
    assert s["User"] == ["enstratus"] and s["Type"] == ["notify"]
    assert s["NoNewPrivileges"] == ["yes"] and s["CapabilityBoundingSet"] == [""]
    assert s["ProtectSystem"] == ["strict"]
    layout = Layout(Path(INSTALL["@ENSTRATUS_HOME@"]))
    writable = set(s["ReadWritePaths"][0].split())
    # what Layout.ensure_dirs creates (every daemon's start calls it) must be writable
    assert {str(layout.run_dir), str(layout.log_dir), str(layout.data_dir)} <= writable
    if unit.name == "enstratus-km.service":
        assert {str(layout.km_dir / d) for d in ("run", "log", "data")} <= writable
    assert not any(p == str(layout.home) or p.endswith("/classes") for p in writable)


def test_the_subscriber_gets_sigterm_alone_for_longer_than_its_warm_stop(tmp_path):
    s = service_section(render(UNITS / "enstratus-workers-subscriber.service", tmp_path))
    assert s["KillMode"] == ["mixed"] and s["KillSignal"] == ["SIGTERM"]
    # the default grace period plus the margin the runner's own stop gives it
    assert int(s["TimeoutStopSec"][0]) >= WorkerSettings().grace_period + STOP_MARGIN


def test_the_target_pulls_in_every_worker_daemon():
    target = configparser.ConfigParser(strict=False)
    target.read(UNITS / "enstratus-workers.target")
    wanted = set(target["Unit"]["Wants"].split())
    assert wanted == {u.name for u in SERVICES if u.name.startswith("enstratus-workers-")}
    for unit in SERVICES:
        if unit.name.startswith("enstratus-workers-"):
            assert "PartOf=enstratus-workers.target" in unit.read_text()
            assert "WantedBy=enstratus-workers.target" in unit.read_text()
