"""``action.cancel_grace``: the seconds a cancelled action has to stop, validated as the daemons do."""

from __future__ import annotations

import pytest

from enstratus_workers import cli
from enstratus_workers.config import load_settings
from enstratus_workers.layout import Layout
from tests import servicehome as sh


@pytest.mark.parametrize("value, says", [("0", "out of range"), ("-5", "out of range"),
                                         ("soon", "is not a number"), ("100000", "out of range")])
def test_a_bad_cancel_grace_fails_config_check_naming_file_key_and_line(tmp_path, capsys, value, says):
    # Given the shipped files but for the cancel grace
    home = sh.make_home(tmp_path)
    path = home / "services/worker/classes/worker.properties"
    sh.set_keys(path, {"action.cancel_grace": value})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("action.cancel_grace"))
    # When the operator runs config check / Then it exits 6, naming the file, line and key
    code = cli.main(["--home", str(home), "config", "check"])
    err = capsys.readouterr().err
    assert code == 6 and f"worker.properties:{line}, key 'action.cancel_grace'" in err and says in err, err


def test_the_shipped_file_states_the_default_and_a_fraction_is_taken(tmp_path):
    home = sh.make_home(tmp_path)
    assert load_settings(Layout(home)).subscriber.cancel_grace == 10
    sh.set_keys(home / "services/worker/classes/worker.properties", {"action.cancel_grace": "0.5"})
    assert load_settings(Layout(home)).worker.cancel_grace == 0.5
