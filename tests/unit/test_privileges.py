"""The privilege drop: which account, refusals, the tree given to it, and the drop itself."""

from __future__ import annotations

import os
import pickle

import pytest

from enstratus_workers import errors
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout
from enstratus_workers.runtime import privileges
from enstratus_workers.runtime.privileges import Setting, configured_user, read_default
from tests.sysaccount import scratch_account


@pytest.fixture
def defaults(tmp_path, monkeypatch):
    """/etc/default/enstratus-workers (and -km) replaced by scratch files that do not exist yet."""
    workers, km = tmp_path / "default-workers", tmp_path / "default-km"
    monkeypatch.setattr(privileges, "WORKERS_DEFAULTS", workers)
    monkeypatch.setattr(privileges, "KM_DEFAULTS", km)
    return workers, km


@pytest.fixture
def account():
    with scratch_account() as acct:
        yield acct


def test_read_default_reads_as_a_shell_sourcing_the_file_would(tmp_path):
    f = tmp_path / "defaults"
    f.write_text('# ENSTRATUS_USER=commented\nENSTRATUS_HOME=/services\n'
                 'ENSTRATUS_USER=first\n  export ENSTRATUS_USER="svc user" # the account\n')
    assert read_default(f, "ENSTRATUS_USER") == ("svc user", 4)  # the last assignment wins
    assert read_default(f, "ENSTRATUS_HOME") == ("/services", 2)
    assert read_default(f, "OTHER") is None
    assert read_default(tmp_path / "missing", "ENSTRATUS_USER") is None


def test_an_unparsable_value_names_the_file_key_and_line(tmp_path):
    f = tmp_path / "defaults"
    f.write_text("\nENSTRATUS_USER='unterminated\n")
    with pytest.raises(ConfigError) as exc:
        read_default(f, "ENSTRATUS_USER")
    assert (exc.value.file, exc.value.key, exc.value.line) == (f, "ENSTRATUS_USER", 2)


def test_the_environment_wins_over_the_defaults_file_and_empty_means_unset(defaults):
    workers, km = defaults
    workers.write_text("ENSTRATUS_USER=fromfile\n")
    assert configured_user({"ENSTRATUS_USER": "fromenv"}, [workers]) == Setting("fromenv")
    assert configured_user({}, [workers]) == Setting("fromfile", workers, 1)
    assert configured_user({"ENSTRATUS_USER": ""}, [workers]) is None
    workers.write_text("ENSTRATUS_USER=\n")
    assert configured_user({}, [workers]) is None
    # the KM reads its own defaults file first
    km.write_text("ENSTRATUS_USER=kmuser\n")
    assert configured_user({}, privileges.defaults_files("km")) == Setting("kmuser", km, 1)
    assert configured_user({}, privileges.defaults_files("publisher")) is None


def test_an_unknown_user_is_refused_with_exit_6_naming_it_and_where_it_was_set(defaults, tmp_path, capsys):
    # Given root (the suite runs as root here) and an account that does not exist
    if os.geteuid() != 0:
        pytest.skip("the refusal is only reached as root")
    workers, _ = defaults
    workers.write_text("ENSTRATUS_USER=ew_no_such_user\n")
    layout = Layout(tmp_path / "home")
    # When a daemon starts, then it is refused before anything is created
    assert privileges.drop_if_root("publisher@h", "publisher", layout, {}) == errors.EXIT_NOT_CONFIGURED
    err = capsys.readouterr().err
    assert "publisher@h: configuration error:" in err
    assert f"{workers}:1, key 'ENSTRATUS_USER': no such user 'ew_no_such_user'" in err
    assert not (tmp_path / "home").exists()
    # And from the environment the message says so
    assert privileges.drop_if_root("km@h", "km", layout, {"ENSTRATUS_USER": "ew_nobody_here"}) == 6
    assert "key 'ENSTRATUS_USER': no such user 'ew_nobody_here' (set in the environment): create it" in capsys.readouterr().err
    assert os.geteuid() == 0


def test_root_without_an_account_stays_root_and_warns(defaults, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("the warning is only given as root")
    layout = Layout(tmp_path / "home")
    assert privileges.drop_if_root("pinger@h", "pinger", layout, {}) is None
    assert "pinger@h: warning: running as root; set ENSTRATUS_USER" in capsys.readouterr().err
    # ENSTRATUS_USER=root is the operator saying so: no warning
    assert privileges.drop_if_root("pinger@h", "pinger", layout, {"ENSTRATUS_USER": "root"}) is None
    assert capsys.readouterr().err == ""
    assert os.geteuid() == 0 and not (tmp_path / "home").exists()


def test_not_root_changes_nothing(defaults, tmp_path, monkeypatch, capsys):
    # an account that does not exist would be refused as root: not root, it is not even looked up
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 1000)
    env = {"ENSTRATUS_USER": "ew_no_such_user"}
    assert privileges.drop_if_root("admin@h", "admin", Layout(tmp_path / "home"), env) is None
    assert capsys.readouterr().err == "" and not (tmp_path / "home").exists()


def test_prepare_creates_the_daemon_dirs_and_gives_them_and_the_first_key_to_the_account(tmp_path, account):
    # Given an install whose data directory root wrote into earlier, and no key file yet
    layout = Layout(tmp_path / "home")
    (layout.classes_dir).mkdir(parents=True)
    layout.data_dir.mkdir(parents=True)
    (layout.data_dir / "provisioning.db").write_text("root's")
    (layout.data_dir / "sub").mkdir()
    (layout.data_dir / "sub" / "f").write_text("x")
    # and a link root must not follow: to a file outside the tree
    outside = tmp_path / "outside"
    outside.write_text("not the account's")
    (layout.data_dir / "link").symlink_to(outside)
    (layout.data_dir / "dirlink").symlink_to(tmp_path)

    # When a KM started as root prepares for the account
    privileges.prepare(layout, "km", account)

    # Then every directory it writes exists, is the account's, with its mode
    for directory, mode in privileges.writable_dirs(layout, "km"):
        st = directory.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (account.uid, account.gid, mode), directory
    # and so is what root left in them, links included, but never what a link points to
    for p in (layout.data_dir / "provisioning.db", layout.data_dir / "sub", layout.data_dir / "sub" / "f",
              layout.data_dir / "link", layout.data_dir / "dirlink"):
        assert os.lstat(p).st_uid == account.uid, p
    assert outside.stat().st_uid == 0 and tmp_path.stat().st_uid == 0
    # and the key files generated on first use (the KM's master key too) are the account's, 0600
    for key in (layout.classes_dir / "enstratus-provisioning.cfg", layout.km_dir / "classes" / "km-master.key"):
        st = key.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (account.uid, 0o600), key
    # And a second prepare has nothing left to change
    assert privileges.give_tree(layout.data_dir, account) == 0


def test_become_takes_the_account_ids_and_groups_for_good(account):
    # Given a child process of root (the drop cannot be undone: never in the test process)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([0, 4, 27])  # root's supplementary groups, which must go
            env = {}
            privileges.become(account, env)
            try:
                os.setuid(0)
                regained = True
            except PermissionError:
                regained = False
            result = (os.getresuid(), os.getresgid(), sorted(os.getgroups()), regained, env)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = repr(exc)
        os.write(w, pickle.dumps(result))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        result = pickle.loads(f.read())
    os.waitpid(pid, 0)
    # Then real, effective and saved ids are the account's, root's groups are gone, root is lost
    uids, gids, groups, regained, env = result
    assert uids == (account.uid,) * 3 and gids == (account.gid,) * 3
    assert groups == [account.gid] and regained is False
    assert env == {"HOME": account.home, "USER": account.name, "LOGNAME": account.name}
