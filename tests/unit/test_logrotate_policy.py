"""etc/logrotate.d/enstratus-workers: one placeholder, filled at install; logrotate accepts the
filled file (``logrotate -d``) for the default install root and for a scratch one, where it
would rotate every daemon's log, the KM's included, and signal through the pid files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "etc" / "logrotate.d" / "enstratus-workers"
PLACEHOLDER = "@ENSTRATUS_HOME@"


def render(home: str, dest: Path) -> Path:
    """The policy with the install root filled in, as ``make install`` writes it."""
    dest.write_text(POLICY.read_text().replace(PLACEHOLDER, home))
    dest.chmod(0o644)   # logrotate ignores a policy that others may write
    return dest


def logrotate_debug(conf: Path, state: Path, *extra: str) -> subprocess.CompletedProcess:
    """``logrotate -d``: reads the policy and says what it would do, touching nothing."""
    if shutil.which("logrotate") is None:
        unavailable("logrotate is not installed")
    return subprocess.run(["logrotate", "-d", *extra, "-s", str(state), str(conf)], capture_output=True,
                          text=True, timeout=30, check=False)


def test_the_policy_has_one_placeholder_and_every_log_and_pid_directory():
    text = POLICY.read_text()
    assert set(re.findall(r"@[A-Z_]+@", text)) == {PLACEHOLDER}
    for where in ("services/worker/log/*.log", "services/km/log/*.log",
                  "services/worker/run/*.pid", "services/km/run/*.pid"):
        assert f"{PLACEHOLDER}/{where}" in text
    for directive in ("missingok", "notifempty", "compress", "delaycompress", "sharedscripts", "postrotate"):
        assert re.search(rf"^\s+{directive}\b", text, re.MULTILINE), directive


def test_logrotate_accepts_the_policy_for_the_default_install_root(tmp_path):
    # Given the policy filled in for /services/worker (which need not exist here: missingok)
    conf = render("/services/worker", tmp_path / "enstratus-workers")
    # When logrotate reads it in debug mode (nothing is touched)
    r = logrotate_debug(conf, tmp_path / "state")
    # Then it has no complaint, and it knows both log directories
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error" not in (r.stdout + r.stderr).lower()
    assert "/services/worker/services/worker/log/*.log" in r.stderr + r.stdout
    assert "/services/worker/services/km/log/*.log" in r.stderr + r.stdout


def test_logrotate_would_rotate_every_log_of_a_scratch_install(tmp_path):
    # Given a scratch install root with the logs of a daemon, a worker process and the KM
    home = tmp_path / "home"
    logs = [home / "services/worker/log/publisher@h.log", home / "services/worker/log/worker@default.1.log",
            home / "services/km/log/km@h.log"]
    for log in logs:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("a line\n")
        log.parent.chmod(0o750)
    (home / "services/worker/log/empty@h.log").write_text("")
    conf = render(str(home), tmp_path / "enstratus-workers")
    # When logrotate is asked, in debug mode, to rotate now
    r = logrotate_debug(conf, tmp_path / "state", "-f")
    out = r.stdout + r.stderr
    # Then each non-empty log would be renamed to .1 (compressed only on the next round), the
    # empty one left alone, and the pid files' processes signalled once after all of them
    assert r.returncode == 0, out
    assert "error" not in out.lower()
    for log in logs:
        assert f"renaming {log} to {log}.1" in out, out
    assert "empty@h.log" in out and f"renaming {home}/services/worker/log/empty@h.log" not in out
    assert out.count("running postrotate script") == 1
    assert not any(p.name.endswith(".1") for p in home.rglob("*"))   # debug mode touched nothing
