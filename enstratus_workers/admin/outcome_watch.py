"""The admin API's waits for outcomes (``GET /jobs/{id}?wait=S``): woken by the recording, not
by polling each job.

A client that wants a job's outcome asked ``GET /jobs/{id}`` again and again, each time a
request, a thread and a read. A wait instead holds its request open, on the event loop (no
thread of the pool: a thousand waits must not starve the other routes), until the job has ended
or ``S`` seconds passed. The daemon has one waiter's bell for all its waits (``jobs/wakeup.py``):
the recorder of this host rings it naming the jobs whose outcomes it wrote, and another host's
recorder through the broker and this host's publisher (``mq/amqp_wake.py``). Each ring costs one
read, by primary key, of the waited jobs it names (or of all, for a ring naming none), however
many waits there are; and so does the safety net, a read of every waited job each
``SAFETY_NET_S``, which covers a ring lost. One read is in flight at a time; the jobs rung
meanwhile are read after it.

At most ``MAX_WAITS`` waits at once: more are refused with a 503 and ``Retry-After``, so that
clients holding requests open cannot grow the daemon's memory or its reads without bound. The
watch's bell and its safety net run only while a wait is on: the first wait starts them, and
the safety net's first round with none left closes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable, Iterable

from enstratus_workers.jobs import wakeup

log = logging.getLogger(__name__)

SAFETY_NET_S = 1.0    # every waited job is read this often even without a ring
MAX_WAITS = 1000      # waits held open at once by one daemon
WAIT_MAX_S = 60.0     # the longest wait a request may ask for


class TooManyWaits(Exception):
    """``MAX_WAITS`` waits are on already."""


class OutcomeWatch:
    """The daemon's waits: ``watching(job_id)`` registers one, whose ``wait(timeout)`` returns
    True once the job has ended, False at the timeout. ``finished_among(ids)`` (a
    ``JobStore.finished_among``) is called on a thread of the loop's executor."""

    def __init__(self, finished_among: Callable[[Iterable[int]], set[int]], run_dir: Path | None,
                 *, safety_net_s: float | None = None, max_waits: int | None = None):
        self._finished_among = finished_among
        self._run_dir = run_dir
        self.safety_net_s = SAFETY_NET_S if safety_net_s is None else safety_net_s
        self.max_waits = MAX_WAITS if max_waits is None else max_waits
        self._waits: dict[int, set[asyncio.Event]] = {}
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bell = None
        self._net: asyncio.Task | None = None
        self._to_read: set[int] = set()
        self._reading: asyncio.Task | None = None
        self.reads = 0          # reads of the waited jobs, rung or by the safety net

    @property
    def waiting(self) -> int:
        return self._count

    @asynccontextmanager
    async def watching(self, job_id: int):
        """Register a wait for ``job_id`` before its row is read (so no ring between the read
        and the wait is missed); yields it. ``TooManyWaits`` past ``max_waits``."""
        if self._count >= self.max_waits:
            raise TooManyWaits(f"{self._count} waits are on; at most {self.max_waits}")
        ended = asyncio.Event()
        self._waits.setdefault(job_id, set()).add(ended)
        self._count += 1
        self._start()
        try:
            yield _Wait(ended)
        finally:
            self._count -= 1
            waits = self._waits.get(job_id)
            if waits is not None:
                waits.discard(ended)
                if not waits:
                    del self._waits[job_id]

    # -- the bell and the safety net: on while a wait is ---------------------------------------
    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._net is not None and not self._net.done() and self._loop is loop:
            return
        if self._loop is not loop and self._bell is not None:   # a loop gone (an app's tests)
            self._bell.close()
            self._bell = None
        self._loop = loop
        self._bell = _open_bell(self._run_dir)
        if self._bell is not None:
            self._loop.add_reader(self._bell.fileno(), self._rung)
        self._net = self._loop.create_task(self._safety_net())

    def _stop(self) -> None:
        if self._bell is not None:
            self._loop.remove_reader(self._bell.fileno())
            self._bell.close()
            self._bell = None
        self._to_read.clear()

    async def _safety_net(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.safety_net_s)
                if not self._waits:
                    return
                self._read(self._waits)
        finally:
            self._stop()

    def _rung(self) -> None:
        """The bell is readable: read the waited jobs its rings named (all, for a plain ring)."""
        bell = self._bell
        if bell is None:
            return
        bell.drain()
        named = bell.recorded
        self._read(self._waits if named is None else [i for i in named if i in self._waits])

    # -- reading the waited jobs ---------------------------------------------------------------
    def _read(self, job_ids: Iterable[int]) -> None:
        self._to_read.update(job_ids)
        if self._to_read and (self._reading is None or self._reading.done()):
            self._reading = self._loop.create_task(self._read_all())

    async def _read_all(self) -> None:
        while self._to_read:
            ids, self._to_read = self._to_read, set()
            self.reads += 1
            try:
                ended = await self._loop.run_in_executor(None, self._finished_among, ids)
            except Exception as exc:  # noqa: BLE001 - the next ring or round reads them again
                log.warning("could not read %d waited jobs (%s); reading them again at the next "
                            "ring or in %.0f s", len(ids), exc, self.safety_net_s)
                return
            for job_id in ended:
                for event in self._waits.get(job_id, ()):
                    event.set()


class _Wait:
    def __init__(self, ended: asyncio.Event):
        self._ended = ended

    async def wait(self, timeout: float) -> bool:
        """True once the job has ended (or had, when the wait was registered), else False at
        ``timeout``."""
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def _open_bell(run_dir: Path | None):
    """This daemon's waiter bell, announced; None where there are no bells (the safety net alone)."""
    if run_dir is None or not wakeup.available():
        return None
    try:
        return wakeup.Bell(run_dir, f"admin-{os.getpid()}-{id(asyncio.get_running_loop()):x}",
                           wakeup.WAITER).announce()
    except OSError as exc:
        log.warning("no bell for the API's waits (%s); they read their jobs at the safety net", exc)
        return None
