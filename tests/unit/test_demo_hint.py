"""``make run`` ends by saying where the status page is and how to log in to it, without
printing the token itself."""

from __future__ import annotations

from enstratus_workers.demo import pages_hint
from enstratus_workers.layout import Layout
from tests import servicehome as sh
from tests.unit.admin_helpers import TOKEN, set_token


def test_the_hint_names_the_served_address_and_where_the_token_is(tmp_path):
    # Given an install whose admin daemon serves on a port it chose, with a generated token
    home = sh.make_home(tmp_path)
    layout = Layout(home)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    (layout.run_dir / "admin@host1.url").write_text("http://127.0.0.1:41234/\n")
    # Then the hint is that address's status page, and the command that shows the token
    assert pages_hint(layout) == ("Status page: http://127.0.0.1:41234/ui/status\n"
                                  "  log in with the token in services/worker/run/admin.token:  "
                                  "cat services/worker/run/admin.token")
    # And with no admin daemon running, where it would serve, saying it does not run
    (layout.run_dir / "admin@host1.url").unlink()
    assert "none: the admin daemon is not running (with port 0" in pages_hint(layout)
    sh.set_keys(home / "services" / "worker" / "classes" / "admin.cfg", {"port": 8777})
    assert "http://127.0.0.1:8777/ui/status (the admin daemon is not running)" in pages_hint(layout)


def test_a_token_set_in_admin_cfg_is_named_by_its_file_never_shown(tmp_path):
    home = sh.make_home(tmp_path)
    set_token(home)
    hint = pages_hint(Layout(home))
    assert "log in with the token set in services/worker/classes/admin.cfg" in hint and TOKEN not in hint
