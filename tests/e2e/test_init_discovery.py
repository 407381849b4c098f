"""How ``etc/init.d/enstratus-workers`` and ``enstratus-km`` find their install, wherever they
are read from: run from the checkout, through a symlink in an ``etc/init.d``, as a plain copy
there, and as the copy ``make install`` writes (the root and the defaults file filled in).

Each install root here holds only a stale pid file, so ``status`` (exit 1, naming the pid file)
proves which root the script found without starting anything. A scratch ``etc/`` stands in for
``/etc``: the scripts read the defaults file beside the path they were run by.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enstratus_workers.install import Installer, Paths
from enstratus_workers.layout import short_hostname

REPO = Path(__file__).resolve().parents[2]
HOST = short_hostname()
SCRIPTS = {"enstratus-workers": ("services/worker", "publisher"), "enstratus-km": ("services/km", "km")}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "ENSTRATUS_HOME"}
    e["PYTHONPATH"] = str(REPO)
    e.update(extra)
    return e


def install_root(where: Path, script: str) -> Path:
    """An install root holding a stale pid file of the script's first daemon, and a venv (this
    test run's) where an install has one, since a plain copy runs its install's own Python."""
    subdir, daemon = SCRIPTS[script]
    run = where / subdir / "run"
    run.mkdir(parents=True)
    (run / f"{daemon}@{HOST}.pid").write_text("999999999\n")   # above pid_max: never alive
    (where / subdir / "bin").symlink_to(REPO / subdir / "bin")
    (where / ".venv").symlink_to(Path(sys.prefix))
    return where


def status(script: Path, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), "status"], check=False, env=env(**extra), cwd="/", capture_output=True,
                          text=True, timeout=30)


def found(r: subprocess.CompletedProcess, home: Path) -> bool:
    return r.returncode == 1 and str(home.resolve()) in r.stdout


def etc_with_defaults(tmp: Path, home: Path) -> Path:
    etc = tmp / "etc"
    (etc / "init.d").mkdir(parents=True)
    (etc / "default").mkdir()
    (etc / "default" / "enstratus-workers").write_text(f'ENSTRATUS_HOME="{home}"\n')
    return etc


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_symlink_in_init_d_reads_the_defaults_file_beside_it(tmp_path, script):
    home = install_root(tmp_path / "home", script)
    etc = etc_with_defaults(tmp_path, home)
    (etc / "init.d" / script).symlink_to(REPO / "etc" / "init.d" / script)
    r = status(etc / "init.d" / script)
    assert found(r, home), r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_plain_copy_in_init_d_reads_the_defaults_file_beside_it(tmp_path, script):
    home = install_root(tmp_path / "home", script)
    etc = etc_with_defaults(tmp_path, home)
    shutil.copy(REPO / "etc" / "init.d" / script, etc / "init.d" / script)
    r = status(etc / "init.d" / script)
    assert found(r, home), r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_enstratus_home_from_the_environment_wins_over_the_defaults_file(tmp_path, script):
    home = install_root(tmp_path / "home", script)
    other = install_root(tmp_path / "other", script)
    etc = etc_with_defaults(tmp_path, other)
    (etc / "init.d" / script).symlink_to(REPO / "etc" / "init.d" / script)
    r = status(etc / "init.d" / script, ENSTRATUS_HOME=str(home))
    assert found(r, home) and str(other) not in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_plain_copy_with_nothing_to_go_by_says_so(tmp_path, script):
    (tmp_path / "etc" / "init.d").mkdir(parents=True)
    shutil.copy(REPO / "etc" / "init.d" / script, tmp_path / "etc" / "init.d" / script)
    r = status(tmp_path / "etc" / "init.d" / script)
    assert r.returncode == 4 and "cannot find the install" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_installed_copy_finds_its_root_and_its_defaults_file_can_move_it(tmp_path, script):
    # Given the copy make install writes into a scratch root (its root and defaults file filled in)
    root = tmp_path / "root"
    Installer(REPO, Paths.of(str(root), "/services"), "enstratus", "sysv", sys.executable,
              out=lambda s: None).install_etc()
    install_root(root, script)
    installed = root / "etc" / "init.d" / script
    # Then it finds that root, from anywhere, with no ENSTRATUS_HOME
    assert found(status(installed), root)
    # And an edited defaults file points it elsewhere; without one it falls back on its root
    other = install_root(tmp_path / "other", script)
    (root / "etc" / "default" / "enstratus-workers").write_text(f'ENSTRATUS_HOME="{other}"\n')
    assert found(status(installed), other)
    (root / "etc" / "default" / "enstratus-workers").unlink()
    assert found(status(installed), root)
