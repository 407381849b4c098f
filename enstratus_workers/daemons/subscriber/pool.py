"""The subscriber's worker processes: spawn, hand out tasks, collect outcomes, supervise.

Each worker process connects back to a Unix socket in ``services/worker/run/`` (authenticated by
a per-run key file readable only by the service account) and runs its tasks in order. The pool
keeps, per worker, the tasks it sent and has not heard back about; the oldest is the one running.
That is what makes a crash or a time-limit kill precise: the running task is charged an attempt,
the rest were never started and go back to be dispatched again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Listener

from enstratus_workers.backoff import Backoff
from enstratus_workers.clock import now_ms
from enstratus_workers.daemons.subscriber import scaling, worker_socket
from enstratus_workers.jobs import pathtrace
from enstratus_workers.jobs.values import Task
from enstratus_workers.mq.base import Delivery
from enstratus_workers.runtime import logtarget

log = logging.getLogger(__name__)

WORKER_INFLIGHT = 16        # most tasks sent to one worker ahead of its answers (short actions)
# ... and of actions that take under TINY_MS (whole ms: most read 0): one frame of these is a
# few ms of work, and a worker that runs dry waits for the subscriber's next round (which reads
# the next deliveries' rows first), so under a backlog the frames must be larger to keep it busy
WORKER_INFLIGHT_TINY = 64
TINY_MS = 2.0
RESPAWN_BACKOFF_MAX = 30.0  # seconds between restarts of a worker that keeps dying at start
# 1, 2, 4 ... 30 s; no jitter: one pool's own workers do not stampede a shared server
RESPAWN_BACKOFF = Backoff(first=1.0, cap=RESPAWN_BACKOFF_MAX, jitter=None)
RESTART_CAP = 5             # unexpected deaths within RESTART_WINDOW_S before a worker is disabled
RESTART_WINDOW_S = 60.0
ACCEPT_RETRY_S = 1.0        # the accept loop's pause after an error of its own (not a worker's hang-up)


@dataclass
class Assignment:
    """A checked delivery and the task its job row makes of it, waiting for or handed to a worker."""

    delivery: Delivery
    task: Task
    worker_type: str
    received_ms: int = field(default_factory=now_ms)


@dataclass
class WorkerHandle:
    worker_type: str
    index: int
    proc: subprocess.Popen | None = None
    conn: object = None
    pid: int | None = None
    display: str = ""
    inflight: deque = field(default_factory=deque)
    head_since_ms: int = 0                         # when its head task started (wall clock: stored)
    head_since: float = 0.0                        # the same, monotonic: the time limit's
    spawned_at: float = 0.0                        # wall clock: shown as uptime
    spawned_mono: float = 0.0                      # monotonic: how soon it died
    connected_at: float = 0.0
    reincarnations: int = 0
    tasks_done: int = 0
    retiring: bool = False
    kill_reason: str | None = None
    next_spawn_at: float = 0.0                     # monotonic; 0: no respawn due
    fast_deaths: int = 0
    deaths: deque = field(default_factory=deque)   # times of unexpected deaths (the restart cap)
    disabled: bool = False                         # died too often: not restarted until a reload
    scaled_down: bool = False                      # retired by the autoscaler: not restarted
    idle_since: float | None = None                # monotonic time it last ran out of work
    hup_pending: bool = False                      # SIGHUP came before it connected: sent then

    @property
    def name(self) -> str:
        return f"{self.worker_type}.{self.index}"

    @property
    def state(self) -> str:
        if self.disabled:
            return "disabled"
        if self.conn is None:
            return "starting" if self.proc is not None else "stopped"
        if self.retiring:
            return "stopping"
        return "working" if self.inflight else "idle"

    def snapshot(self) -> dict:
        return {"name": self.name, "display": self.display, "type": self.worker_type, "pid": self.pid,
                "state": self.state, "inflight": len(self.inflight), "tasks_done": self.tasks_done,
                "reincarnations": self.reincarnations,
                "uptime_s": round(time.time() - self.spawned_at, 1) if self.spawned_at else 0}


@dataclass
class PoolEvents:
    """What one round of the pool produced for the subscriber to act on."""

    finished: list = field(default_factory=list)   # (Assignment, Outcome)
    crashed: list = field(default_factory=list)    # (Assignment, (reason, start_ms)): what a dead worker ran
    returned: list = field(default_factory=list)   # Assignment never started: dispatch again


class WorkerPool:
    def __init__(self, settings, layout, subscriber_name: str, wake_fd: int, python: str = sys.executable,
                 time_limits: dict[str, float] | None = None):
        self.settings, self.layout = settings, layout
        self.time_limits = time_limits or {}     # per-action overrides of action.time_limit
        self.subscriber_name = subscriber_name
        self.python = python
        self._wake_fd = wake_fd
        self.handles: list[WorkerHandle] = []
        self._arrivals: deque = deque()         # (hello, conn) from the accept thread
        self._listener: Listener | None = None
        self._accepting = False
        self.stopping = False
        self.types = {t.name: t for t in settings.subscriber.types}   # desired state; see set_types
        self._last_scale = 0.0
        self._mean_ms: dict[str, float] = {}     # recent action duration per worker type
        # the subscriber logs to the journal: its workers write to the same stderr, no file
        self.log_to_journal = logtarget.to_journal()

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        sock = worker_socket.address(self.layout, self.subscriber_name)
        key_file = worker_socket.authkey_path(self.layout, self.subscriber_name)
        worker_socket.socket_path(self.layout, self.subscriber_name).unlink(missing_ok=True)
        authkey = secrets.token_bytes(32)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(authkey)
        self._listener = Listener(sock, family="AF_UNIX", authkey=authkey)
        if not worker_socket.is_abstract(sock):
            os.chmod(sock, 0o600)
        self._accepting = True
        threading.Thread(target=self._accept_loop, name="worker-accept", daemon=True).start()
        self.scale({}, force=True)       # the minimum of every type

    def _accept_loop(self) -> None:
        while self._accepting:
            try:
                conn = self._listener.accept()
            except ConnectionError as exc:
                # a worker gone in the middle of the handshake (killed while it connected): the
                # listener is fine, and every worker after it must still get in
                log.warning("a worker hung up while connecting: %s", exc)
                continue
            except OSError as exc:
                if not self._accepting or exc.errno in (errno.EBADF, errno.EINVAL):
                    if self._accepting:
                        log.exception("the worker socket was closed under the accept loop")
                    return
                log.exception("worker socket accept failed; listening again in %.0f s", ACCEPT_RETRY_S)
                time.sleep(ACCEPT_RETRY_S)   # out of file descriptors, say: never spin
                continue
            except Exception:  # failed authentication or a broken client: keep listening
                log.warning("refused a connection to the worker socket", exc_info=True)
                continue
            try:
                if not conn.poll(10):
                    raise EOFError("no hello")
                hello = worker_socket.unpack(conn.recv_bytes())
                if hello.get("t") != "hello":
                    raise ValueError("first frame is not hello")
            except (EOFError, OSError, ValueError) as exc:
                log.warning("dropping a worker connection: %s", exc)
                conn.close()
                continue
            self._arrivals.append((hello, conn))
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_fd, b"w")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the main loop is waking anyway

    def _spawn(self, handle: WorkerHandle) -> bool:
        """Start ``handle``'s process; False if the system would not (it is then retried as
        after a death, with the backoff and the restart cap: a fork that fails for want of
        memory or processes, or a log file that cannot be opened, must not take the subscriber
        and every action running on this host down with it)."""
        try:
            self._start_process(handle)
        except OSError as exc:
            log.error("could not start worker %s: %s", handle.name, exc)
            handle.proc, handle.conn, handle.spawned_at = None, None, time.time()
            handle.spawned_mono = time.monotonic()
            self._schedule_respawn(handle, expected=False)
            return False
        return True

    def _start_process(self, handle: WorkerHandle) -> None:
        cmd = [self.python, "-m", "enstratus_workers.daemons.worker", "run",
               "--home", str(self.layout.home), "--name", handle.name,
               "--type", handle.worker_type, "--subscriber", self.subscriber_name]
        # stderr too: a crash's last words end up in its log (or, inherited, in the journal)
        log_file = self.layout.log_file("worker", handle.name)
        with contextlib.nullcontext() if self.log_to_journal else open(log_file, "ab") as out:
            handle.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                           cwd=str(self.layout.home), close_fds=True)
        handle.hup_pending = False   # it opens its log after any rename that came before
        handle.pid, handle.conn, handle.retiring, handle.kill_reason = handle.proc.pid, None, False, None
        handle.spawned_at, handle.spawned_mono = time.time(), time.monotonic()
        handle.idle_since = handle.spawned_mono
        handle.display = f"{handle.worker_type}@{self.settings.worker.host_name}.{handle.index}"
        log.info("started worker %s (pid %d)", handle.name, handle.pid)

    # -- the main loop's share -----------------------------------------------------------------
    def connections(self) -> list:
        return [h.conn for h in self.handles if h.conn is not None]

    def adopt_arrivals(self) -> None:
        """Attach connections that arrived: our spawned workers, or workers an operator started."""
        while self._arrivals:
            hello, conn = self._arrivals.popleft()
            handle = next((h for h in self.handles if h.name == hello.get("name") and h.conn is None
                           and (h.proc is None or h.pid == hello.get("pid"))), None)
            if handle is None:  # started by hand with bin/worker: supervised by whoever started it
                wtype = hello.get("type") or "default"
                index = 1 + max((h.index for h in self.handles if h.worker_type == wtype), default=0)
                handle = WorkerHandle(wtype, index, pid=hello.get("pid"))
                handle.spawned_at = time.time()
                self.handles.append(handle)
            if self.stopping:
                try:
                    conn.send_bytes(worker_socket.pack({"t": "stop"}))
                except OSError:
                    pass  # gone already: its disconnect is noticed on the next read
            handle.conn, handle.connected_at = conn, time.time()
            handle.display = hello.get("display") or handle.display
            log.info("worker %s connected (pid %s)", handle.display, hello.get("pid"))
            if handle.hup_pending:
                handle.hup_pending = False
                self._send_hup(handle)

    def read(self, ready_conns) -> PoolEvents:
        events = PoolEvents()
        ready = set(map(id, ready_conns))
        for h in self.handles:
            if h.conn is None or id(h.conn) not in ready:
                continue
            try:
                while h.conn.poll():
                    self._on_frame(h, worker_socket.unpack(h.conn.recv_bytes()), events)
            except (EOFError, OSError, ValueError):
                self._on_disconnect(h, events)
        return events

    def _on_frame(self, h: WorkerHandle, frame: dict, events: PoolEvents) -> None:
        if frame["t"] == "done":
            for outcome in worker_socket.outcomes(frame):
                if not h.inflight:
                    raise ValueError("an outcome of no task")
                a = h.inflight.popleft()
                took = max(0, outcome.end_ms - outcome.start_ms)
                mean = self._mean_ms.get(h.worker_type, took)
                self._mean_ms[h.worker_type] = 0.8 * mean + 0.2 * took
                if (outcome.job_id, outcome.attempt, outcome.owner) != (*a.task.key, a.task.owner):
                    # the protocol's ordering broke (a bug): recorded as the attempt it answers
                    log.error("worker %s answered job %s, expected %s", h.name, outcome.job_id, a.task.job_id)
                    outcome = replace(outcome, job_id=a.task.job_id, attempt=a.task.attempt, owner=a.task.owner)
                events.finished.append((a, outcome))
                h.tasks_done += 1
            h.head_since_ms, h.head_since = now_ms(), time.monotonic()
            if not h.inflight:
                h.idle_since = time.monotonic()
        elif frame["t"] == "bye":
            log.info("worker %s retiring: %s", h.name, frame.get("reason"))
            h.retiring = True
            events.returned.extend(h.inflight)
            h.inflight.clear()

    def _on_disconnect(self, h: WorkerHandle, events: PoolEvents) -> None:
        try:
            h.conn.close()
        except OSError:
            pass
        h.conn = None
        if h.proc is None:                 # an external worker: nobody else will reap it
            self._charge(h, events, "worker process disconnected")
            self.handles.remove(h)

    def _charge(self, h: WorkerHandle, events: PoolEvents, reason: str) -> None:
        if h.inflight:
            events.crashed.append((h.inflight.popleft(), (reason, h.head_since_ms)))
        events.returned.extend(h.inflight)
        h.inflight.clear()

    def inflight_cap(self, wtype: str) -> int:
        """How many tasks a worker of this type may hold: many short ones keep it busy between
        round trips; long ones would only wait behind each other (and hide the backlog from
        the autoscaler), so those get one running and one ready."""
        mean = self._mean_ms.get(wtype)
        if mean is None:
            return 2
        if mean < TINY_MS:
            return WORKER_INFLIGHT_TINY
        return WORKER_INFLIGHT if mean < 20 else 4 if mean < 200 else 2

    def backlog(self, wtype: str, pending: int) -> int:
        """Work of a type not yet started: waiting here, or queued inside a worker behind its current task."""
        return pending + sum(max(0, len(h.inflight) - 1) for h in self.handles if h.worker_type == wtype)

    def dispatch(self, pending: dict) -> None:
        """Send waiting assignments (``{worker_type: deque}``) to the least loaded workers."""
        for wtype, queue in pending.items():
            cap = self.inflight_cap(wtype)
            while queue:
                free = [h for h in self.handles if h.worker_type == wtype and h.conn is not None
                        and not h.retiring and len(h.inflight) < cap]
                if not free:
                    break
                h = min(free, key=lambda x: len(x.inflight))
                share = -(-len(queue) // len(free))  # spread a burst over every free worker
                take = min(cap - len(h.inflight), share)
                batch = [queue.popleft() for _ in range(min(take, len(queue)))]
                if not h.inflight:
                    h.head_since_ms, h.head_since = now_ms(), time.monotonic()
                h.idle_since = None
                h.inflight.extend(batch)
                try:
                    h.conn.send_bytes(worker_socket.pack({"t": "run", "a": [a.task.to_frame() for a in batch]}))
                except OSError:
                    pass  # the disconnect is noticed on the next read; its tasks go back then
                pathtrace.stamp("subscriber.sent", (a.task.job_id for a in batch))

    def supervise(self) -> PoolEvents:
        """Reap dead workers, kill those past the time limit, respawn; call every round."""
        events = PoolEvents()
        default_limit = self.settings.worker.time_limit
        now = time.monotonic()
        for h in list(self.handles):
            if h.proc is None:
                continue
            code = h.proc.poll()
            if code is None:
                limit = h.inflight and self.time_limits.get(h.inflight[0].task.action, default_limit)
                # monotonic: a wall clock stepped forward (NTP, a resumed VM) must not kill every
                # worker holding a task, nor one stepped back let a hung action run on
                if h.inflight and h.kill_reason is None and now - h.head_since > limit:
                    h.kill_reason = f"time limit of {limit:g}s exceeded"
                    log.warning("worker %s: job %s %s; killing pid %d", h.name,
                                h.inflight[0].task.job_id, h.kill_reason, h.pid)
                    h.proc.kill()
                continue
            if h.conn is not None:
                try:
                    h.conn.close()
                except OSError:
                    pass
                h.conn = None
            reason = h.kill_reason or f"worker process died ({_describe_exit(code)})"
            expected = h.retiring or self.stopping
            self._charge(h, events, reason)
            h.proc = None
            if not expected:
                log.error("worker %s (pid %s): %s", h.name, h.pid, reason)
            if self.stopping:
                continue
            if h.scaled_down:
                self.handles.remove(h)
                continue
            self._schedule_respawn(h, expected)
        for h in self.handles:
            if h.proc is None and h.conn is None and not self.stopping and time.monotonic() >= h.next_spawn_at \
                    and h.next_spawn_at:
                h.next_spawn_at = 0.0
                self._spawn(h)
        return events

    def _schedule_respawn(self, h: WorkerHandle, expected: bool) -> None:
        if not expected:
            h.reincarnations += 1
            now = time.monotonic()
            h.deaths.append(now)
            while h.deaths and now - h.deaths[0] > RESTART_WINDOW_S:
                h.deaths.popleft()
            if len(h.deaths) >= RESTART_CAP:
                h.disabled, h.next_spawn_at = True, 0.0
                log.error("worker %s died %d times in %.0fs: disabled until the next reload (SIGHUP "
                          "or an admin change)", h.name, len(h.deaths), RESTART_WINDOW_S)
                return
        quick = time.monotonic() - h.spawned_mono < 5
        h.fast_deaths = h.fast_deaths + 1 if (quick and not expected) else 0
        delay = RESPAWN_BACKOFF.delay(h.fast_deaths)
        h.next_spawn_at = time.monotonic() + delay

    # -- desired state and autoscaling ---------------------------------------------------------
    def set_types(self, types) -> None:
        """New desired worker types (from the admin API or a reload); disabled workers get a new chance."""
        self.types = {t.name: t for t in types}
        for h in self.handles:
            if h.disabled:
                h.disabled, h.next_spawn_at = False, time.monotonic()
                h.deaths.clear()

    def scale(self, pending: dict[str, int], force: bool = False) -> None:
        """Move toward the desired types: at most one autoscaling step per type per second."""
        now = time.monotonic()
        if self.stopping or (not force and now - self._last_scale < 1.0):
            return
        self._last_scale = now
        for step, target in scaling.plan(self.types, self._views(pending, now)):
            if step == "spawn":
                taken = {h.index for h in self.handles if h.worker_type == target}
                handle = WorkerHandle(target, next(i for i in range(1, len(taken) + 2) if i not in taken))
                self.handles.append(handle)
                self._spawn(handle)
            else:
                h = next(h for h in self.handles if h.name == target)
                log.info("retiring worker %s (%s)", h.name,
                         "no longer wanted" if h.worker_type not in self.types else "scaling down")
                h.scaled_down = h.retiring = True
                if h.conn is not None:
                    try:
                        h.conn.send_bytes(worker_socket.pack({"t": "stop"}))
                    except OSError:
                        pass
                elif h.proc is not None:
                    h.proc.terminate()

    def _views(self, pending: dict[str, int], now: float) -> dict:
        members: dict[str, list] = {}
        disabled: dict[str, int] = {}
        for h in self.handles:
            if h.disabled and not h.retiring:
                disabled[h.worker_type] = disabled.get(h.worker_type, 0) + 1
                continue
            if h.retiring or (h.proc is None and h.conn is None and not h.next_spawn_at):
                continue
            idle = None if h.inflight else now - (h.idle_since or now)
            members.setdefault(h.worker_type, []).append((h.name, idle))
        return {t: scaling.TypeView(active=len(m), busy=sum(1 for _, i in m if i is None),
                                    pending=self.backlog(t, pending.get(t, 0)), members=tuple(m),
                                    disabled=disabled.get(t, 0))
                for t, m in members.items()} | {t: scaling.TypeView(pending=pending.get(t, 0),
                                                                    disabled=disabled.get(t, 0))
                                                for t in self.types if t not in members}

    def idle(self) -> bool:
        return not any(h.inflight for h in self.handles)

    def snapshot(self) -> list[dict]:
        return [h.snapshot() for h in self.handles]

    # -- SIGHUP ---------------------------------------------------------------------------------
    def pass_on_hup(self) -> None:
        """Pass a SIGHUP on to every worker process, so each reopens its log file and points its
        stdout and stderr at the new one. A worker that has not connected yet may not have set its
        handler up, and SIGHUP's default action is to terminate: it gets its SIGHUP on connecting."""
        sent = 0
        for h in self.handles:
            if h.conn is None:
                h.hup_pending = h.proc is not None
            elif self._send_hup(h):
                sent += 1
        log.info("passed SIGHUP on to %d worker process(es)", sent)

    def _send_hup(self, h: WorkerHandle) -> bool:
        try:
            if h.proc is not None:
                h.proc.send_signal(signal.SIGHUP)  # our child: its pid is ours until we reap it
            elif h.pid:
                os.kill(h.pid, signal.SIGHUP)      # started by hand, and connected right now
            else:
                return False
        except OSError:   # gone (ProcessLookupError), or its pid reused by another user's process
            return False
        return True

    # -- stop ----------------------------------------------------------------------------------
    def ask_to_stop(self) -> None:
        """Tell every worker to finish what it holds and exit; no new work is dispatched after this."""
        self.stopping = True
        for h in self.handles:
            if h.conn is not None:
                try:
                    h.conn.send_bytes(worker_socket.pack({"t": "stop"}))
                except OSError:
                    pass

    def terminate(self, timeout: float = 5.0) -> None:
        """Make sure no worker process survives: SIGTERM, then SIGKILL after ``timeout``."""
        self.stopping = True
        self._accepting = False
        procs = [h.proc for h in self.handles if h.proc is not None and h.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for h in self.handles:
            if h.conn is not None:
                h.conn.close()
                h.conn = None
            h.proc = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        worker_socket.authkey_path(self.layout, self.subscriber_name).unlink(missing_ok=True)
        worker_socket.socket_path(self.layout, self.subscriber_name).unlink(missing_ok=True)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
