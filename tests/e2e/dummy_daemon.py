"""A tiny daemon for the runner's and the init script's end-to-end tests.

Run as ``python -m tests.e2e.dummy_daemon start --home H [options]``. Its run() loops until
asked to stop and writes "warm" or "cold" to ``--marker``; options make it misbehave in the ways
the runner must handle. Its settings come from ``load_settings`` below, not the config package:
a file ``broken-config`` in the home turns into a ConfigError.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from enstratus_workers.config.settings import (
    KMClientSettings,
    MQSettings,
    PersistenceSettings,
    ProvisioningSettings,
    Settings,
    WorkerSettings,
)
from enstratus_workers.errors import ConfigError
from enstratus_workers.runtime import runner
from enstratus_workers.runtime.service import Service

log = logging.getLogger(__name__)


def load_settings(layout):
    broken = layout.home / "broken-config"
    if broken.exists():
        raise ConfigError(broken.read_text().strip(), file=broken, key="dummy", line=1)
    return Settings(layout.home, MQSettings(), WorkerSettings(grace_period=2.0), PersistenceSettings(),
                    KMClientSettings(), ProvisioningSettings())


class DummyService(Service):
    daemon = "dummy"

    def __init__(self, options, home: Path):
        self.options = options
        self.home = home
        self.stop_requested = False
        self.cold = False

    def request_stop(self, cold: bool = False) -> None:
        if self.options.ignore_stop or (self.options.ignore_warm and not cold):
            return
        self.stop_requested = True
        self.cold = self.cold or cold

    def run(self, ready) -> None:
        child = None
        if self.options.spawn_child:
            # the home in its command line lets the test's clean-up find it
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(self.home)])
            Path(self.options.spawn_child).write_text(str(child.pid))
        if self.options.fail_before_ready:
            raise RuntimeError("dummy failed before ready")
        time.sleep(self.options.ready_delay)
        ready()
        log.info("dummy ready")
        if self.options.crash_after_ready:
            raise RuntimeError("dummy crashed after ready")
        while not self.stop_requested:
            time.sleep(0.02)
        if self.options.marker:
            Path(self.options.marker).write_text("cold" if self.cold else "warm")
        if child is not None:
            child.terminate()
            child.wait()


def add_arguments(parser) -> None:
    parser.add_argument("--marker", help="file to write 'warm' or 'cold' into on stop")
    parser.add_argument("--ignore-warm", action="store_true", help="ignore the first SIGTERM")
    parser.add_argument("--ignore-stop", action="store_true", help="ignore every SIGTERM")
    parser.add_argument("--fail-build", action="store_true")
    parser.add_argument("--fail-before-ready", action="store_true")
    parser.add_argument("--crash-after-ready", action="store_true")
    parser.add_argument("--spawn-child", metavar="PIDFILE", help="start a child; write its pid here")
    parser.add_argument("--ready-delay", type=float, default=0.0)


def build(settings, layout, name, options):
    if options.fail_build:
        raise RuntimeError("dummy build failed")
    return DummyService(options, layout.home)


def main(argv=None, daemon: str = "dummy_daemon") -> int:
    return runner.main(daemon, build, argv, add_arguments=add_arguments, settings_loader=load_settings)


if __name__ == "__main__":
    raise SystemExit(main())
