"""One writer node for the whole fleet: which node of a Galera cluster an engine connects to.

Galera replicates every commit to every node, but it does not carry row locks across nodes:
a ``SELECT ... FOR UPDATE`` taken on one node does not stop a writer on another. The outbox
relay's ``FOR UPDATE SKIP LOCKED``, the totals rows and the leases all rely on such locks, so
every process of the fleet writes through the same node, the usual Galera practice: the
**first healthy node in the URL's order** (``db/nodes.py`` says what healthy is). Each process
finds it for itself, with nothing shared but that rule and the list, so they agree:

- At the first connection an engine probes the nodes and takes the first healthy one.
- Connections are made to the current writer only. When one fails as a lost node (it cannot
  connect, the connection is lost or the server shuts down, or the node answers 1047 "WSREP has
  not yet prepared node for application use"), the nodes are probed again and the first healthy
  one becomes the writer; connections to the old one are dropped as they are next lent out
  (``_lend``), so the pool empties of them without waiting.
- Every ``RECHECK_S`` seconds of use, a process probes again in the background and moves to the
  first healthy node if that is another: back to an earlier node that is healthy again, or on
  from a current one that stopped being synced (a donor, a node cut off from the primary
  component). Processes that saw different failures at different times thus converge on the
  same node within a few seconds, with no coordination.

Why two hosts that briefly disagree (one still on node 1, one already on node 2) are safe:
Galera certifies every commit against all the others in one global order, so when both write
the same rows one of the two commits is refused with error 1213 and rolled back; nothing is
lost or merged, and ``db/retry.py`` runs the loser's transaction again, now reading the
winner's rows. Every write of ours is a guarded compare-and-set (a job's status and attempt,
its owner, a lease's holder, a version), so the second try of a refused write applies only if
the row still reads as it expects. What a row lock would have prevented across nodes, two
publishers relaying the same pending job, can then happen in that moment: both publish it and
one commit is refused; the job is published twice, which the outbox and the subscriber's
delivery check already tolerate (the second delivery is stale and acked away unrun). And a
read on one node waits until that node has applied what the others committed before it
(``wsrep_sync_wait``, set on every connection to a cluster: ``_read_after_commits``), so a
delivery checked there never misses the row of a job committed through the other.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

import sqlalchemy as sa

from ..config.dburl import DbUrl, Node
from .nodes import NodeState, Prober, first_healthy
from .retry import LOST_CODES, NODE_NOT_READY, error_code

log = logging.getLogger(__name__)

UNKNOWN_VARIABLE = 1193   # ER_UNKNOWN_SYSTEM_VARIABLE: a server without Galera's variables
RECHECK_S = 5.0   # how often a busy process looks for an earlier healthy node
FRESH_S = 1.0     # a probe round younger than this that saw a node down needs no second round


class Writer:
    """The writer node of one engine, and its moves. Thread-safe; probes never run twice at once."""

    def __init__(self, nodes: Sequence[Node], probe_all: Callable[[Sequence[Node]], list[NodeState]],
                 *, label: str, recheck_s: float = RECHECK_S,
                 clock: Callable[[], float] = time.monotonic):
        self.nodes = tuple(nodes)
        self._probe_all = probe_all
        self.label = label
        self.recheck_s = recheck_s
        self._clock = clock
        self._current: Node | None = None     # chosen at the first connection
        self._lock = threading.Lock()     # held while choosing: one probe round at a time
        self._flag = threading.Lock()     # guards _checking alone
        self._next_check = 0.0
        self._checking = False
        self._last: tuple[float, list[NodeState]] | None = None   # when the last full round ran, its states
        self._all_down = False       # said so once: not again at every connection until one is back
        self.moves = 0

    @property
    def current(self) -> Node:
        """The node to connect to now (probing for it the first time)."""
        node = self._current
        if node is None:
            with self._lock:
                if self._current is None:
                    states = self._probe_round()
                    self._current = first_healthy(states) or self.nodes[0]
                    log.info("%s: writing to %s (%s)", self.label, self._current, _listed(states))
                node = self._current
        return node

    def lost(self, node: Node, why: str) -> Node:
        """A connection to ``node`` failed as a lost node: take the first healthy node. If every
        node is down, stay (the next connection tries again). Returns the writer after it."""
        with self._lock:
            if node != self._current:
                return self._current     # another thread saw it first and has moved already
            # A round of a moment ago that already found this node unfit is the truth still
            # (every node down: no new round at each failing connection); one that found it
            # healthy is not: this failure is news.
            known = self._last is not None and self._clock() - self._last[0] < FRESH_S and \
                not any(s.node == node and s.healthy for s in self._last[1])
            states = self._last[1] if known else self._probe_round()
            choice = first_healthy(states)
            if choice is None:
                if not self._all_down:
                    log.error("%s: no healthy node to write to (%s: %s); nodes: %s; trying again at "
                              "each connection", self.label, node, why, _listed(states))
                self._all_down = True
            else:
                if self._all_down:
                    log.warning("%s: %s is healthy again", self.label, choice)
                self._all_down = False
                if choice != node:
                    self._move(choice, f"{node} lost: {why}", states)
            return self._current

    def _probe_round(self) -> list[NodeState]:
        """Every node's state now (the lock held), remembered for ``FRESH_S``."""
        states = self._probe_all(self.nodes)
        now = self._clock()
        self._last = (now, states)
        self._next_check = now + self.recheck_s
        return states

    def recheck_due(self) -> bool:
        return self._current is not None and not self._checking and self._clock() >= self._next_check

    def recheck(self) -> None:
        """Move to the first healthy node if it is not the current one (module docstring).
        The probes run outside the lock: connections go on being made meanwhile."""
        start = self._current
        if start is None:
            return
        ahead = self.nodes[:self.nodes.index(start) + 1]
        states = self._probe_all(ahead)
        if first_healthy(states) is None:              # the current one is not fit either
            states += self._probe_all(self.nodes[len(ahead):])
        with self._lock:
            self._next_check = self._clock() + self.recheck_s
            choice = first_healthy(states)
            if self._current != start or choice is None or choice == start:
                return                                 # moved meanwhile, or nothing better
            earlier = self.nodes.index(choice) < self.nodes.index(start)
            self._move(choice, "an earlier node is healthy again" if earlier else f"{start} is not fit",
                       states)

    def recheck_soon(self) -> None:
        """Start a background recheck if one is due (called as connections are lent out, so it
        must not wait: it never takes the lock a probe round may hold)."""
        with self._flag:
            if not self.recheck_due():
                return
            self._checking = True
        try:
            threading.Thread(target=self._background_recheck, name="db-writer-recheck", daemon=True).start()
        except RuntimeError:   # the OS would not give us a thread now: the next lend tries again
            self._checking = False

    def _background_recheck(self) -> None:
        try:
            self.recheck()
        except Exception:  # noqa: BLE001 - a failed probe round must not end the process
            log.exception("%s: writer recheck failed", self.label)
        finally:
            self._checking = False

    def _move(self, to: Node, why: str, states: Sequence[NodeState]) -> None:
        old, self._current = self._current, to
        self.moves += 1
        log.warning("%s: writing to %s now, was %s (%s; %s)", self.label, to, old, why, _listed(states))


def _listed(states: Sequence[NodeState]) -> str:
    return ", ".join(map(str, states)) or "no node probed"


def attach(engine: sa.Engine, parsed: DbUrl, writer: Writer | None = None) -> Writer:
    """Make ``engine`` connect to its cluster's writer node and follow it (module docstring);
    ``writer``: another engine's, to share its choice (the same database's server engine)."""
    if writer is None:
        writer = Writer(parsed.nodes, Prober(parsed.url).probe_all, label=f"database {parsed.url.database!r}")
    engine.enstratus_writer = writer   # for tests and the curious: which node, how many moves

    @sa.event.listens_for(engine, "do_connect")
    def _connect(dialect, conn_rec, cargs, cparams):
        node = writer.current
        try:
            return _connect_to(dialect, conn_rec, cargs, cparams, node)
        except dialect.loaded_dbapi.Error as exc:
            now = writer.lost(node, _why(exc))
            if now == node:
                raise
            return _connect_to(dialect, conn_rec, cargs, cparams, now)   # once, to the new writer

    @sa.event.listens_for(engine, "checkout")
    def _lend(_dbapi_conn, record, _proxy):
        # A connection to a node that is no longer the writer is replaced, as pool_pre_ping
        # replaces a dead one: the pool drops it and connects again, to the writer.
        if record.info.get("node") not in (None, writer.current):
            raise sa.exc.DisconnectionError("the writer node moved")
        writer.recheck_soon()

    @sa.event.listens_for(engine, "handle_error")
    def _failed(ctx):
        code = error_code(ctx.original_exception)
        if ctx.connection is None or not (ctx.is_disconnect or code in LOST_CODES or code == NODE_NOT_READY):
            return
        try:
            node = ctx.connection.info.get("node")
        except Exception:  # noqa: BLE001 - a connection already closed has no info left
            node = None
        if node is not None:
            writer.lost(node, _why(ctx.original_exception))

    return writer


def _connect_to(dialect, conn_rec, cargs, cparams, node: Node):
    conn = dialect.connect(*cargs, **{**cparams, "host": node.host, "port": node.port})
    _read_after_commits(conn)   # only a cluster's engine is attached (engine.mysql_engine)
    if conn_rec is not None:
        conn_rec.info["node"] = node
    return conn


def _read_after_commits(conn) -> None:
    """On a cluster, make a read see every commit the cluster made before it began.

    A Galera node applies the others' commits asynchronously after certifying them, so while two
    processes disagree about the writer (one moved back to a rejoined node, one not yet), a job
    committed on one node can be relayed and delivered before the other node, where its
    subscriber reads, has applied it: the row check finds no row and dead-letters the job as a
    stranger (the likely way the writer-move fleet test once lost a job). ``wsrep_sync_wait = 1`` makes
    every read (``SELECT``, ``BEGIN``) wait until the node has applied what the cluster committed
    before it, a round of the group's messages; a server outside a cluster (``wsrep_on`` off)
    ignores it, and one that does not know the variable (MySQL) answers 1193, which leaves it
    as it was."""
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait = 1")
    except Exception as exc:  # noqa: BLE001 - only "unknown variable" is expected; say any other
        if error_code(exc) != UNKNOWN_VARIABLE:
            log.warning("cannot ask for causal reads on this connection (%s); reads on a node "
                        "that has not applied a commit yet may miss it", _why(exc))


def _why(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = f"{args[0]} {args[1]}" if len(args) >= 2 else (str(exc) or type(exc).__name__)
    return text.splitlines()[0][:200]
