"""The admin daemon: serves the HTTP admin API, the status pages and the metrics with uvicorn.

``services/worker/bin/admin start|stop|status|run`` like every daemon; the init script starts it
unless given ``--without-http``. It listens on ``admin.cfg``'s host and port (127.0.0.1:8777 by
default) and writes the URL it serves to ``services/worker/run/admin@<name>.url`` while it runs
(useful with ``port = 0``, which takes any free port).

The socket is bound here, before uvicorn starts, so a port in use stops the start with that
reason on the operator's terminal instead of a bare exit code. The runner owns the signals:
uvicorn's own handlers are not installed, and ``request_stop`` only sets uvicorn's flags
(``should_exit`` for a warm stop: open requests finish; ``force_exit`` for a cold one).

uvicorn speaks HTTP with httptools here, with a deadline and a size cap for each request's
headers (``admin.cfg`` ``header_timeout``, 10 s; 16 KiB; see ``admin.slowheaders``), so clients
that trickle their headers cannot hold connections open. The app is told the address really
bound, for its Host check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path

import uvicorn

from enstratus_workers.runtime import runner
from enstratus_workers.runtime.service import Service

from ..admin import AdminContext, create_app, load_admin_settings, load_token
from ..admin.config import AdminSettings
from ..admin.slowheaders import header_timeout_protocol
from ..clock import now_ms
from ..errors import DaemonError
from ..mq.amqp_wake import ring_through_broker

log = logging.getLogger(__name__)

GRACEFUL_S = 5.0  # a warm stop waits this long for open requests
HEARTBEAT_EVERY_S = 5.0   # the admin daemon's heartbeat row, so every host's pages list it


class _Beat:
    """The admin daemon's heartbeat (``fleet/hosts.py`` lists it with its host's daemons),
    written from a thread of its own: uvicorn owns the main thread."""

    def __init__(self, ctx, name: str, url: str):
        self.ctx, self.name, self.url = ctx, name, url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admin-heartbeat", daemon=True)
        self.started_ms = now_ms()

    def start(self) -> "_Beat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.ctx.dbs.heartbeats.beat("admin", self.name, ttl_s=HEARTBEAT_EVERY_S * 3,
                                             started_ms=self.started_ms, details={"url": self.url})
            except Exception as exc:   # the database away: the pages say so; beat again later
                log.warning("could not write heartbeat: %s", type(exc).__name__)
            self._stop.wait(HEARTBEAT_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        with contextlib.suppress(Exception):
            self.ctx.dbs.heartbeats.remove("admin", self.name)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling, telling us once it listens."""

    def __init__(self, config: uvicorn.Config, on_started):
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self):
        yield  # the runner's handlers stay: they call request_stop, which sets our flags

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ``DaemonError`` saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.create_server(address, family=family, backlog=128)
    except OSError as exc:
        raise DaemonError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                          "(set host and port in services/worker/classes/admin.cfg)") from None
    sock.setblocking(False)
    return sock


class AdminService(Service):
    daemon = "admin"

    def __init__(self, settings, layout, name: str, admin: AdminSettings):
        self.settings, self.layout, self.name, self.admin = settings, layout, name, admin
        self._server: _Server | None = None
        self._stop = False
        self._cold = False
        self.url: str | None = None
        self.app = None          # the app being served (its ``state.ctx``: the daemon's context)

    def request_stop(self, cold: bool = False) -> None:
        self._stop = True
        self._cold = self._cold or cold
        server = self._server
        if server is not None:
            server.should_exit = True
            server.force_exit = self._cold

    @property
    def url_file(self) -> Path:
        return self.layout.run_dir / f"{self.daemon}@{self.name}.url"

    def run(self, ready) -> None:
        token = load_token(self.admin)  # a bad token file is a config error (exit 6)
        sock = listen(self.admin.host, self.admin.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        ctx = AdminContext.open(self.settings, self.layout, self.admin)
        beat = _Beat(ctx, self.name, self.url).start()
        # On RabbitMQ a job submitted here also wakes the publishers of the other hosts (those of
        # this host hear the local bell); None on the embedded transport, a fleet of one.
        wake_out = ring_through_broker(self.settings, ctx.dbs.ringers, f"admin@{self.name}", ctx.dbs.heartbeats)
        try:
            app = self.app = create_app(ctx, token, address=(self.admin.host, port))
            config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False,
                                    http=header_timeout_protocol(self.admin.header_timeout),
                                    timeout_graceful_shutdown=int(GRACEFUL_S))

            def started() -> None:
                self._write_url()
                log.info("admin serving %s (token from %s)", self.url,
                         "admin.cfg" if self.admin.token else self.admin.token_file)
                ready()

            self._server = _Server(config, started)
            if self._stop:  # a stop that came while we were building
                self.request_stop(self._cold)
            self._server.run(sockets=[sock])
        finally:
            with contextlib.suppress(OSError):
                self.url_file.unlink()
            sock.close()
            beat.stop()
            if wake_out is not None:
                wake_out.close()
            ctx.close()

    def _write_url(self) -> None:
        tmp = self.url_file.with_suffix(".url.tmp")
        tmp.write_text(self.url + "\n")
        os.replace(tmp, self.url_file)


def build(settings, layout, name, options) -> AdminService:
    admin = load_admin_settings(layout)
    if options.host is not None or options.port is not None:
        admin = replace(admin, host=options.host or admin.host,
                        port=admin.port if options.port is None else options.port)
    return AdminService(settings, layout, name, admin)


def _arguments(parser) -> None:
    parser.add_argument("--host", help="listen address (default: admin.cfg's host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: admin.cfg's port, 8777; 0: any free)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return runner.main("admin", build, argv, _arguments)


if __name__ == "__main__":
    # Run under the module's real name, so its loggers are not called "__main__".
    from enstratus_workers.daemons.admin import main as _main

    raise SystemExit(_main())
