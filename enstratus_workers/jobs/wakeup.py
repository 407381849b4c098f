"""The outbox's doorbell: a committed pending job wakes this host's publishers at once.

The publisher relays what is ``pending`` in the provisioning DB. Polling for it costs a wait on
every job (half the poll interval on average) and a query every interval when idle; instead,
whoever makes a job pending (``JobStore``: a submit, a retry, a recovery, a re-drive) rings
after the commit, and the publisher waits on its bell. The poll stays, with a long interval, as
the safety net: a ring is a hint, never the truth, so a lost one (a publisher restarting, a
full socket buffer) costs that interval and nothing else. Publishers on other hosts are rung
through the broker (``mq/amqp_wake.py``, attached with ``Ringer.also``), and so are the waiters and
the subscribers of other hosts (``Ringer.also_done``, and ``also`` on a subscribers' ringer):
a job's outcome recorded on one host wakes the ``submit --wait`` on another.

Two kinds of ring: "work" (``RING``: a job was made pending) and "room" (``ROOM``: a job left
its queue's relay window by starting or finishing, so jobs held back by a full window may go
now). A publisher whose last pass left nothing pending has no use for room, and waits on
(``Bell.only_room``): at idle every job's start and outcome rang the publisher, and each such
ring cost an empty relay pass that the next job's submit could land behind. A room ring through
the broker reaches other hosts as a plain ring (their publishers cannot know this host's outbox).

A third kind goes to the publishers only: "cancel" (``CANCEL``, ``Ringer.ring_cancel``), sent by a
process that cancelled a job and holds no broker connection of its own (the CLI, a script
calling ``jobs.submit.cancel``). This host's subscribers were rung directly; the publisher,
whose ear on the broker is open anyway, passes the cancel on to the other hosts' subscribers
(``mq/amqp_wake.py``), so the job's owner, wherever it runs, looks at once rather than at its
once-a-second look. Like a room ring it costs the publisher no relay pass.

A waiter's ring names the jobs whose outcomes were recorded (``DONE``, ``Ringer.ring_done``), so a
waiter reads its job's row only when its job is among them: every outcome the host records rings
every waiter, and without the names each of them read its row on each ring, a statement and its
CPU per waiter per outcome. A ring naming more jobs than fit (``RING_MAX``), or none, is a plain
ring: every waiter reads. A name is a hint like any ring (anyone on the host can send one): one
naming a job whose outcome is not recorded costs its waiter a read, and the waiter's
``WAIT_SAFETY_NET_S`` read covers a ring that never came (``jobs/submit.py``, ``wait_for``).

A bell is a Unix datagram socket in the abstract namespace (no file to clean up, no path-length
limit), one per publisher, named after the install's run directory and the publisher's name;
a ringer finds the publishers by their pid files (and waiters by their ``.bell`` files), looking
again whenever the directory it watches changed (one ``stat`` per ring). The waiters' ``.bell``
files live in a directory of their own (``run/bells/``, made by the first waiter), not beside the
pid files: every ``wait_for`` announces one and takes it away, and in the run directory each
waited job made every ringer of every role look again, so a publisher ringer rang after each
submit paid a ``glob`` on its critical path. Sending never blocks: when a publisher's buffer
is full it already has rings waiting, which is all a ring says. A publisher drains every ring
waiting before it reads the outbox, so a burst of 10,000 submits costs a few reads, not 10,000.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import time
import weakref
from pathlib import Path

RING = b"!"   # a job was made pending
ROOM = b"r"   # a job left its queue's window: work held back by a full window may go now
DONE = b"d"   # these jobs' outcomes were recorded (``Ringer.ring_done``; the rest: ids, by commas)
CANCEL = b"c"  # to a publisher: a job was cancelled here; pass it on to other hosts' subscribers
#: The largest ring sent, in bytes: more recorded jobs than fit are rung plainly
RING_MAX = 8192
RESCAN_S = 1.0   # a ringer looks again at least this often, even if the directory seems unchanged


PUBLISHER = "publisher"   # rung when a job is made pending
WAITER = "waiter"         # rung when outcomes are recorded: ``submit --wait`` and its kind
SUBSCRIBER = "subscriber"  # rung when a job is cancelled: the owner looks for it at once
#: the roles whose bells are found through their daemon's pid file, not a ``.bell`` file
_PID_ROLES = (PUBLISHER, SUBSCRIBER)
#: the run directory's subdirectory of the other roles' ``.bell`` files (module docstring)
BELLS_DIR = "bells"


def marker_dir(run_dir: Path, role: str) -> Path:
    """Where a ringer of ``role`` finds its bells: the run directory for the pid roles (their
    pid files), else ``run/bells/`` (the ``.bell`` files ``Bell.announce()`` writes)."""
    return Path(run_dir) if role in _PID_ROLES else Path(run_dir) / BELLS_DIR


def bell_address(run_dir: Path, name: str, role: str = PUBLISHER) -> bytes:
    """The abstract socket address of ``role@name`` of the install using ``run_dir``."""
    return f"{_address_prefix(run_dir)}{role}@{name}".encode()


def _address_prefix(run_dir: Path) -> str:
    """What every bell address of the install using ``run_dir`` begins with."""
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:24]
    return f"\0enstratus-workers/{digest}/"


class Bell:
    """A waiting end: ``wait(timeout)`` returns True once rung (every waiting ring drained).

    A publisher's bell is found through its pid file; any other role's (``WAITER``) is announced
    with ``announce()``, which writes ``role@name.bell`` in ``run/bells/`` (made if need be, the
    run directory itself never) once the socket is bound, and ``close()`` removes it.
    """

    def __init__(self, run_dir: Path, name: str, role: str = PUBLISHER):
        self.address = bell_address(run_dir, name, role)
        self._marker: Path | None = None
        if role not in _PID_ROLES:
            self._marker = marker_dir(run_dir, role) / f"{role}@{name}.bell"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(self.address)
        except OSError:            # taken: another process of that name is up
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.rings = 0       # wake-ups drained (each may stand for many rings)
        self.only_room = False   # the last wake-up drained room (or cancel) rings only (module docstring)
        self.cancelled = False   # the last wake-up drained a cancel ring (``CANCEL``)
        #: the jobs the last wake-up's rings said were recorded (``DONE``); None if one of them
        #: named none (a plain ring, or one cut short): anything may have been recorded
        self.recorded: set[int] | None = set()

    def wait(self, timeout: float) -> bool:
        try:
            readable, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        except (OSError, ValueError):   # closed by stop()
            return False
        if not readable:
            return False
        self.only_room = self._drain()
        self.rings += 1
        return True

    def _drain(self) -> bool:
        """Take every ring waiting; whether they were all room (or cancel) rings. ``recorded``
        says which jobs the outcome rings among them named, ``cancelled`` whether one was a
        cancel ring."""
        only_room = True
        self.recorded = set()
        self.cancelled = False
        while True:
            try:
                data, _ancillary, flags, _address = self._sock.recvmsg(RING_MAX + 64)
            except (BlockingIOError, InterruptedError):
                return only_room
            except OSError:
                return only_room
            if data == CANCEL:
                self.cancelled = True
                continue
            only_room = only_room and data == ROOM
            if data[:1] == DONE and not flags & socket.MSG_TRUNC:   # cut short: not one of ours
                ids = recorded_ids(data[1:])
                self.recorded = None if ids is None or self.recorded is None else self.recorded | ids
            elif data != ROOM:
                self.recorded = None

    def fileno(self) -> int:
        """For ``select`` and ``multiprocessing.connection.wait``, beside other things to wait on;
        ``drain()`` it once it is readable."""
        return self._sock.fileno()

    def drain(self) -> None:
        self._drain()

    def ring(self) -> None:
        """Wake this bell's own waiter (a stop request, or a job its own process made pending)."""
        _send(self._sock, self.address, RING)

    def announce(self) -> "Bell":
        """Write the marker a ringer finds this bell by; an ``OSError`` (no run directory, one
        not writable) closes the bell first, and the caller waits without it."""
        if self._marker is not None:
            try:
                self._marker.parent.mkdir(exist_ok=True)
                self._marker.write_text(f"{os.getpid()}\n")
            except OSError:
                self._sock.close()
                raise
        return self

    def close(self) -> None:
        if self._marker is not None:
            self._marker.unlink(missing_ok=True)
        self._sock.close()


class Ringer:
    """Whoever makes jobs pending: ``ring()`` after the commit wakes every publisher of the
    install (found by its ``publisher@NAME.pid`` files, looked up again at most every second).
    With ``role=WAITER``, the recorder's: every announced waiter (``bells/waiter@NAME.bell``;
    until the first waiter makes that directory, none)."""

    def __init__(self, run_dir: Path, role: str = PUBLISHER):
        self.run_dir = Path(run_dir)
        self.role = role
        self._dir = marker_dir(self.run_dir, role)   # the directory watched and looked through
        self._suffix = ".pid" if role in _PID_ROLES else ".bell"
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        # a store opened and dropped without close() (a script, a test) must not leak the socket
        # or warn about it when collected: close it with its owner
        weakref.finalize(self, self._sock.close)
        self._addresses: list[bytes] = []
        # the install's part of every address, made once: a waiter's bell comes and goes with
        # each waited job, and each rescan resolving the run directory again cost a ring 0.08 ms
        self._prefix: str | None = None
        self._scanned = float("-inf")
        self._mtime = -1
        self._also: list = []
        self._also_done: list = []
        self._otherwise = None

    def also(self, ring) -> None:
        """Call ``ring()`` too on every ``ring()``: the broker's ring of other hosts' publishers
        (``mq/amqp_wake.py``); it must not block."""
        self._also.append(ring)

    def otherwise(self, ring) -> None:
        """Call ``ring()`` on every ``ring()`` while no ``also`` ring is attached: in a process
        with no broker ringer of its own, this host's publishers' ``ring_cancel`` (a subscribers'
        ringer's ring is a cancel: the publisher passes it on to the other hosts)."""
        self._otherwise = ring

    def also_done(self, ring_done) -> None:
        """Call ``ring_done(job_ids)`` too on every ``ring_done()``: the broker's ring of other
        hosts' waiters (``mq/amqp_wake.py``); it must not block."""
        self._also_done.append(ring_done)

    def ring(self, room: bool = False) -> None:
        """Ring every bell of the role: a work ring, or with ``room`` a room ring (module
        docstring); the broker's ``also`` rings are plain rings either way."""
        self._ring_all(ROOM if room else RING)
        for ring in self._also:
            ring()
        if not self._also and self._otherwise is not None:
            self._otherwise()

    def ring_cancel(self) -> None:
        """Ask every bell of the role (the publishers) to pass a cancel on to the other hosts'
        subscribers (module docstring); no broker ring of this process's own."""
        self._ring_all(CANCEL)

    def ring_done(self, job_ids) -> None:
        """Ring every bell of the role (the waiters) with the jobs whose outcomes were just
        recorded (module docstring); more than fit in ``RING_MAX`` bytes, or none: a plain ring."""
        job_ids = list(job_ids)
        payload = ",".join(str(int(i)) for i in job_ids).encode()
        self._ring_all(DONE + payload if payload and len(payload) < RING_MAX else RING)
        for ring_done in self._also_done:
            ring_done(job_ids)

    def _ring_all(self, what: bytes) -> None:
        """Send ``what`` to every bell of the role, looking for them again first if their
        directory changed (or ``RESCAN_S`` passed)."""
        now = time.monotonic()
        try:
            mtime = self._dir.stat().st_mtime_ns
        except OSError:
            mtime = -1
        if mtime != self._mtime or now - self._scanned > RESCAN_S:
            self._mtime = mtime
            self._rescan(now)
        sock = self._sock
        if sock is None:
            return
        for address in self._addresses:
            _send(sock, address, what)

    def _rescan(self, now: float) -> None:
        self._scanned = now
        if self._prefix is None:
            self._prefix = _address_prefix(self.run_dir)
        prefix, suffix = f"{self.role}@", self._suffix
        try:
            names = [n for n in os.listdir(self._dir) if n.startswith(prefix) and n.endswith(suffix)
                     and len(n) >= len(prefix) + len(suffix)]
        except OSError:
            names = []
        self._addresses = [f"{self._prefix}{n[:-len(suffix)]}".encode() for n in names]

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def recorded_ids(payload: bytes) -> set[int] | None:
    """The job ids a ``DONE`` ring names (decimal, by commas); None if it is not such a list."""
    parts = payload.split(b",")
    if not all(p.isdigit() and len(p) <= 19 for p in parts):   # isdigit: ASCII digits only, no sign
        return None
    return {int(p) for p in parts}


def _send(sock: socket.socket, address: bytes, what: bytes = RING) -> None:
    try:
        sock.sendto(what, address)
    except (BlockingIOError, InterruptedError):
        pass    # its buffer is full of rings already
    except OSError:
        pass    # no such publisher (a pid file left behind, one stopping): the poll covers it


def available() -> bool:
    """Abstract Unix sockets exist here (Linux); elsewhere the polls alone carry the service."""
    return hasattr(socket, "AF_UNIX") and os.uname().sysname == "Linux"


def ringer_for(run_dir: Path | None, role: str = PUBLISHER) -> Ringer | None:
    """A ringer for the install at ``run_dir``; None where there are no bells."""
    return Ringer(run_dir, role) if run_dir is not None and available() else None
