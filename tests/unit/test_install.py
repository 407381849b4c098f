"""The pieces of ``make install`` that need no virtualenv: paths, placeholders, config files that
are never overwritten once edited, the manifest, and where init scripts or units go.

The whole install (a real venv, the installed init script running a job, uninstall) is
``tests/e2e/test_system_install.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from enstratus_workers import install
from enstratus_workers.install import (
    Entry,
    Installer,
    InstallError,
    Paths,
    UsageError,
    fill_placeholders,
    install_config,
    read_manifest,
    remove_entries,
    sha256,
    write_manifest,
)

REPO = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.timeout(30)


# --- paths --------------------------------------------------------------------------------------

def test_the_default_prefix_is_the_enstratus_layout():
    p = Paths.of("", "/services")
    assert (p.home, p.worker, p.km) == (Path("/"), Path("/services/worker"), Path("/services/km"))
    assert p.venv == Path("/services/worker/venv") and p.manifest == Path("/services/worker/.installed-files")
    assert p.defaults_file == Path("/etc/default/enstratus-workers") and not p.staged


def test_destdir_prefixes_every_path(tmp_path):
    p = Paths.of(str(tmp_path), "/services")
    assert p.home == tmp_path and p.worker == tmp_path / "services" / "worker"
    assert p.defaults_file == tmp_path / "etc" / "default" / "enstratus-workers" and p.staged


@pytest.mark.parametrize("prefix, says", [("/opt/enstratus", "use PREFIX=/opt/enstratus/services"),
                                          ("services", "must be an absolute path")])
def test_a_prefix_the_code_could_not_find_is_a_usage_error(prefix, says, capsys):
    with pytest.raises(UsageError, match=says):
        Paths.of("", prefix)
    assert install.main(["install", "--prefix", prefix]) == 2
    assert says in capsys.readouterr().err


def test_a_path_with_shell_characters_is_refused(tmp_path):
    with pytest.raises(UsageError, match="shell character"):
        Paths.of(str(tmp_path / "a b"), "/services")


def test_a_bad_user_name_is_a_usage_error_before_anything_is_written(tmp_path, capsys):
    assert install.main(["install", "--destdir", str(tmp_path), "--user", "Root;rm"]) == 2
    assert "ENSTRATUS_USER='Root;rm' is not a user name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- placeholders -------------------------------------------------------------------------------

def test_placeholders_are_filled_and_the_root_slash_is_not_doubled():
    text = "ExecStart=@ENSTRATUS_HOME@/services/worker/bin/publisher run\nUser=@ENSTRATUS_USER@\n"
    assert fill_placeholders(text, {"ENSTRATUS_HOME": "/", "ENSTRATUS_USER": "enstratus"}, Path("u")) == (
        "ExecStart=/services/worker/bin/publisher run\nUser=enstratus\n")
    assert fill_placeholders(text, {"ENSTRATUS_HOME": "/tmp/r", "ENSTRATUS_USER": "x"}, Path("u")).startswith(
        "ExecStart=/tmp/r/services/worker/bin/publisher run\n")


def test_names_that_are_not_placeholders_are_left_alone():
    text = "worker@default.1.pid publisher@%i a@b.c @lower@"
    assert fill_placeholders(text, {}, Path("x")) == text


def test_an_unknown_placeholder_stops_the_install_naming_it():
    with pytest.raises(InstallError, match=r"unit.service has placeholders .*@ENSTRATUS_GROUP@"):
        fill_placeholders("Group=@ENSTRATUS_GROUP@", {"ENSTRATUS_USER": "e"}, Path("unit.service"))


# --- config files -------------------------------------------------------------------------------

def test_a_new_config_is_installed_private(tmp_path):
    dest = tmp_path / "mq.cfg"
    r = install_config(b"a = 1\n", dest, None, 0o600, None)
    assert (r.action, r.recorded_sha) == ("installed", sha256(b"a = 1\n"))
    assert dest.read_bytes() == b"a = 1\n" and dest.stat().st_mode & 0o777 == 0o600


def test_an_unedited_config_follows_the_shipped_one(tmp_path):
    dest = tmp_path / "mq.cfg"
    old = install_config(b"a = 1\n", dest, None, 0o600, None)
    assert install_config(b"a = 1\n", dest, old.recorded_sha, 0o600, None).action == "unchanged"
    r = install_config(b"a = 2\n", dest, old.recorded_sha, 0o600, None)
    assert r.action == "updated" and dest.read_bytes() == b"a = 2\n"
    assert not (tmp_path / "mq.cfg.dist").exists()


def test_an_edited_config_is_kept_and_the_shipped_one_goes_beside_it(tmp_path):
    dest = tmp_path / "mq.cfg"
    first = install_config(b"a = 1\n", dest, None, 0o600, None)
    dest.write_bytes(b"a = 1\nhost = rabbit\n")
    r = install_config(b"a = 2\n", dest, first.recorded_sha, 0o600, None)
    assert r.action == "kept" and r.dist == tmp_path / "mq.cfg.dist"
    assert dest.read_bytes() == b"a = 1\nhost = rabbit\n" and r.dist.read_bytes() == b"a = 2\n"
    # still recorded as what was installed: uninstall will see the edit and keep it
    assert r.recorded_sha == first.recorded_sha


def test_a_config_there_before_any_install_is_kept(tmp_path):
    dest = tmp_path / "worker.properties"
    dest.write_bytes(b"mine\n")
    r = install_config(b"shipped\n", dest, None, 0o600, None)
    assert r.action == "kept" and r.recorded_sha == "-" and dest.read_bytes() == b"mine\n"


# --- manifest and removal -----------------------------------------------------------------------

def test_the_manifest_reads_back_what_was_written(tmp_path):
    entries = [Entry("dir", tmp_path / "d"), Entry("file", tmp_path / "d" / "f", sha256(b"x")),
               Entry("config", tmp_path / "d" / "c", "-"), Entry("venv", tmp_path / "v")]
    write_manifest(tmp_path / "m", entries)
    assert read_manifest(tmp_path / "m") == entries


def test_a_damaged_manifest_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "m").write_text("# header\nfile\t-\n")
    with pytest.raises(InstallError, match=r"m:2: not a manifest line"):
        read_manifest(tmp_path / "m")


def test_removal_keeps_edited_and_unknown_configs(tmp_path):
    same, edited, foreign, plain = (tmp_path / n for n in ("same.cfg", "edited.cfg", "foreign.cfg", "bin"))
    for f in (same, edited, foreign, plain):
        f.write_bytes(b"shipped\n")
    edited.write_bytes(b"edited\n")
    said = []
    kept = remove_entries([Entry("config", same, sha256(b"shipped\n")), Entry("config", edited, sha256(b"shipped\n")),
                           Entry("config", foreign, "-"), Entry("file", plain, sha256(b"shipped\n"))], said.append)
    assert not same.exists() and not plain.exists()
    assert edited.exists() and foreign.exists() and [e.path for e in kept] == [edited, foreign]
    assert said == [f"kept {edited}: edited since it was installed", f"kept {foreign}: edited since it was installed"]


# --- /etc: init scripts or units, defaults, logrotate -------------------------------------------

def fake_checkout(tmp_path: Path) -> Path:
    """The checkout's etc/, plus a unit and a logrotate file that use the placeholders."""
    co = tmp_path / "checkout"
    shutil.copytree(REPO / "etc", co / "etc")
    (co / "etc" / "systemd" / "enstratus-test.service").write_text(
        "[Service]\nUser=@ENSTRATUS_USER@\nExecStart=@ENSTRATUS_HOME@/services/worker/bin/publisher run\n")
    (co / "etc" / "logrotate.d").mkdir(exist_ok=True)
    (co / "etc" / "logrotate.d" / "enstratus-workers").write_text("@ENSTRATUS_HOME@/services/worker/log/*.log {}\n")
    return co


@pytest.mark.parametrize("init_system", ["sysv", "systemd"])
def test_etc_files_get_this_installs_paths(tmp_path, init_system):
    co = fake_checkout(tmp_path)
    root = tmp_path / "root"
    inst = Installer(co, Paths.of(str(root), "/services"), "enstratus", init_system, "python3", out=lambda s: None)
    inst.install_etc()
    defaults = (root / "etc" / "default" / "enstratus-workers").read_text()
    assert f'ENSTRATUS_HOME="{root}"' in defaults and 'ENSTRATUS_USER="enstratus"' in defaults
    assert (root / "etc" / "logrotate.d" / "enstratus-workers").read_text() == f"{root}/services/worker/log/*.log {{}}\n"
    if init_system == "systemd":
        assert not (root / "etc" / "init.d").exists()
        unit = (root / "etc" / "systemd" / "system" / "enstratus-test.service").read_text()
        assert f"ExecStart={root}/services/worker/bin/publisher run" in unit and "User=enstratus" in unit
    else:
        assert not (root / "etc" / "systemd").exists()
        for name in ("enstratus-workers", "enstratus-km"):
            script = root / "etc" / "init.d" / name
            assert os.access(script, os.X_OK)
            text = script.read_text()
            assert f"installed_home='{root}'" in text
            assert f"installed_defaults='{root}/etc/default/enstratus-workers'" in text
    # every directory it made is in the manifest's entries, so uninstall can remove it
    assert Entry("dir", root / "etc" / "default") in inst.entries


# --- a live install (no DESTDIR): the user and update-rc.d, with stand-in commands --------------

@pytest.fixture
def recorded_commands(tmp_path, monkeypatch):
    """``useradd``, ``update-rc.d`` and ``systemctl`` on PATH that only record their arguments."""
    log = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("useradd", "update-rc.d", "systemctl"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return lambda: log.read_text().splitlines() if log.exists() else []


def live_installer(user: str, init_system: str, said: list) -> Installer:
    return Installer(REPO, Paths.of("", "/services"), user, init_system, "python3", out=said.append)


def test_a_live_install_creates_a_missing_system_user(recorded_commands):
    said = []
    live_installer("ewtest-no-such-user", "sysv", said).ensure_user()
    assert recorded_commands() == [("useradd --system --user-group --home-dir /services/worker --no-create-home "
                                    "--shell /usr/sbin/nologin ewtest-no-such-user")]
    assert said == ["created system user ewtest-no-such-user"]


def test_an_existing_user_and_a_destdir_install_create_no_user(recorded_commands, tmp_path):
    live_installer("root", "sysv", []).ensure_user()
    said = []
    Installer(REPO, Paths.of(str(tmp_path), "/services"), "ewtest-no-such-user", "sysv", "python3",
              out=said.append).ensure_user()
    assert recorded_commands() == [] and "DESTDIR set: no user created" in said[0]


@pytest.mark.parametrize("init_system, calls", [
    ("sysv", ["update-rc.d enstratus-km defaults", "update-rc.d enstratus-workers defaults"]),
    ("systemd", ["systemctl daemon-reload"])])
def test_a_live_install_registers_with_the_init_system(recorded_commands, init_system, calls):
    live_installer("root", init_system, []).register()
    assert recorded_commands() == calls


def test_a_destdir_install_registers_nothing(recorded_commands, tmp_path):
    Installer(REPO, Paths.of(str(tmp_path), "/services"), "root", "sysv", "python3", out=print).register()
    assert recorded_commands() == []


# --- uninstall's refusals -----------------------------------------------------------------------

def test_uninstall_without_a_manifest_says_nothing_is_installed(tmp_path, capsys):
    assert install.main(["uninstall", "--destdir", str(tmp_path)]) == 1
    assert "nothing to uninstall: no " in capsys.readouterr().err


def test_uninstall_refuses_while_a_daemon_of_the_install_runs(tmp_path):
    paths = Paths.of(str(tmp_path), "/services")
    installed = paths.worker / "bin" / "publisher"
    installed.parent.mkdir(parents=True)
    installed.write_text("x")
    write_manifest(paths.manifest, [Entry("file", installed, sha256(b"x"))])
    (paths.worker / "run").mkdir()
    (paths.worker / "run" / "publisher@h.pid").write_text(f"{os.getpid()}\n")   # alive: this test
    with pytest.raises(InstallError, match=r"the service is running .*publisher@h.pid.*stop it first"):
        install.uninstall(paths, out=lambda s: None)
    assert installed.exists() and paths.manifest.exists()
