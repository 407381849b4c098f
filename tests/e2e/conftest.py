"""A scratch install of the whole service, on the embedded default and on RabbitMQ + MariaDB."""

from __future__ import annotations

import os
import signal

import pytest

from tests import servicehome as sh


@pytest.fixture(params=["embedded", "rabbitmq+mariadb"])
def service_home(request, tmp_path):
    """An install root with its own config; stopped (and any stray killed) after the test."""
    if request.param == "embedded":
        home = sh.make_home(tmp_path)
    else:
        names = request.getfixturevalue("amqp_names")
        home = sh.make_home(tmp_path, amqp=names, mysql_url=request.getfixturevalue("mysql_url"))
    yield home
    sh.init(home, "stop")
    for pid in sh.our_processes(home):  # a failed test must not leave strays behind
        os.kill(pid, signal.SIGKILL)
