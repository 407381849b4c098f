"""The publisher refuses schedules of actions no worker has, as ``config check`` does."""

from __future__ import annotations

import pytest

from enstratus_workers.config import load_settings
from enstratus_workers.daemons.publisher import daemon as publisher
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout
from tests.servicehome import make_home, set_keys


def test_a_schedule_of_an_unknown_action_stops_the_publisher_before_it_starts(tmp_path):
    # Given an install whose worker.properties schedules an action nobody registered
    home = make_home(tmp_path)
    props = home / "services" / "worker" / "classes" / "worker.properties"
    set_keys(props, {"schedule.server.snyc.interval": 60})
    layout = Layout(home)
    # When the publisher is built (before it forks: the runner turns ConfigError into exit 6)
    with pytest.raises(ConfigError) as refused:
        publisher.build(load_settings(layout), layout, "p", None)
    # Then the problem names the file, the key and a near miss
    text = str(refused.value)
    assert "worker.properties" in text and "schedule.server.snyc.interval" in text
    assert "server.sync" in text


def test_known_schedules_build_a_publisher(tmp_path):
    home = make_home(tmp_path)
    set_keys(home / "services" / "worker" / "classes" / "worker.properties",
             {"schedule.server.sync.interval": 60})
    layout = Layout(home)
    assert isinstance(publisher.build(load_settings(layout), layout, "p", None), publisher.Publisher)
