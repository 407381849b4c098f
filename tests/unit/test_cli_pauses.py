"""``pause``, ``resume`` and ``pauses``: the operator holds a queue's or an account's jobs in the
outbox from the command line (the store the admin API uses), and bad names exit 2 naming them."""

from __future__ import annotations

import json

import pytest

from enstratus_workers import cli
from tests import servicehome as sh


@pytest.fixture
def home(tmp_path):
    return sh.make_home(tmp_path)


def run(home, capsys, *args):
    code = cli.main(["--home", str(home), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_queue_and_an_account_are_paused_listed_and_resumed(home, capsys):
    # When the operator pauses the default queue and account 42
    code, out, _ = run(home, capsys, "pause", "--queue", "default", "--json")
    assert code == 0 and {k: json.loads(out)[k] for k in ("kind", "name", "paused")} == {
        "kind": "queue", "name": "default", "paused": True}
    assert run(home, capsys, "pause", "--account", "42")[:2][0] == 0
    # Then the listing shows both, since when
    code, out, _ = run(home, capsys, "pauses")
    assert code == 0 and out.splitlines()[0].startswith("queue default: paused since ")
    assert out.splitlines()[1].startswith("account 42: paused since ")
    # When both are resumed, Then nothing is paused
    assert run(home, capsys, "resume", "--queue", "default")[:2] == (0, "queue default: not paused\n")
    assert run(home, capsys, "resume", "--account", "42")[0] == 0
    assert run(home, capsys, "pauses", "--json")[:2] == (0, "[]\n")


@pytest.mark.parametrize("args, says", [
    (["pause", "--queue", "nope"], "no queue 'nope'"),
    (["resume", "--queue", "nope"], "no queue 'nope'"),
    (["pause", "--queue", "de fault"], "invalid queue name 'de fault'"),
    (["pause", "--account", "acme "], "invalid account name 'acme '"),
    (["resume", "--account", "a/b"], "invalid account name 'a/b'"),
])
def test_an_unknown_queue_or_a_bad_name_exits_2_naming_it(home, capsys, args, says):
    code, _, err = run(home, capsys, *args)
    assert code == 2 and says in err and "Traceback" not in err
    assert run(home, capsys, "pauses")[1] == "nothing is paused\n"


def test_pause_needs_exactly_one_of_queue_and_account(home, capsys):
    for args in (["pause"], ["pause", "--queue", "default", "--account", "42"]):
        with pytest.raises(SystemExit) as caught:
            cli.main(["--home", str(home), *args])
        assert caught.value.code == 2
    assert "one of the arguments --queue --account is required" in capsys.readouterr().err
