"""Which node of a RabbitMQ cluster a connection goes to, and where it goes when that node goes.

``mq.cfg``'s ``host`` may name several nodes. Every process ranks them by rendezvous hashing (the
highest-random-weight scheme): each node's weight is a hash of the process's seed (host name and
pid) with the node, and the ranking is the nodes by falling weight. A process connects to its
first node, so a fleet's processes spread evenly over the nodes; when that one fails, it goes to
its second, and the processes of a lost node spread evenly over the rest (with "the next in the
list" instead, every one of them would land on the same neighbour). All connections of one
process (the publisher's, the management one, each consumer) share the ranking, so a process
sits on one node.

``connect`` tries the nodes in ranking order, skipping to the end those this ranking lost or could
not reach since (they are tried last, not never: a cluster whose every node restarted must be
found again); the first that answers is used and logged at INFO. If none answers it raises
``ConnectionClosed`` naming every node and why, and the caller backs off (``backoff.py``, with
jitter) before it calls again. ``lost`` records a connection that went away, with why, so the
next ``connect`` starts elsewhere. A transport made afresh (the daemons make one after a lost
connection) starts from the process's first node again, so once that node is back, new
connections return to it and the spread restores itself; while it is down, each fresh
transport pays one refused connect (or, for a host that vanished without a reset, one connect
timeout) before it moves on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Sequence, TypeVar

from enstratus_workers.config.hostlist import Node
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.rendezvous import weight

log = logging.getLogger(__name__)

T = TypeVar("T")


def process_seed() -> str:
    """What makes this process's ranking its own: its host name and pid."""
    return f"{socket.gethostname()}/{os.getpid()}"


def ranked(nodes: Sequence[Node], seed: str) -> tuple[Node, ...]:
    """``nodes`` in this seed's order of preference (``rendezvous.py``; stable across runs)."""
    return tuple(sorted(nodes, key=lambda node: weight(seed, str(node)), reverse=True))


class NodeRanking:
    """The nodes of one transport in its process's order, and those it left; thread-safe."""

    def __init__(self, nodes: Sequence[Node], seed: str, client: str):
        if not nodes:
            raise ValueError("a broker needs at least one node")
        self.order = ranked(nodes, seed)
        self.client = client
        self._lock = threading.Lock()
        self._left: dict[Node, str] = {}    # node -> why this ranking left it (or never got on)

    def candidates(self) -> list[Node]:
        """The order ``connect`` tries: the nodes not left first, then the left ones."""
        with self._lock:
            return ([n for n in self.order if n not in self._left]
                    + [n for n in self.order if n in self._left])

    def connect(self, role: str, open_node: Callable[[Node], T]) -> tuple[Node, T]:
        """``(node, open_node(node))`` for the first node that answers; ``open_node`` raises
        ``ConnectionClosed`` for one that does not. ``ConnectionClosed`` naming them all if none does."""
        failures = []
        candidates = self.candidates()
        for i, node in enumerate(candidates):
            try:
                opened = open_node(node)
            except ConnectionClosed as exc:
                failures.append(f"{node} ({exc})")
                with self._lock:
                    self._left[node] = str(exc)
                following = f"; trying {candidates[i + 1]}" if i + 1 < len(candidates) else ""
                log.warning("%s %s: broker node %s does not answer (%s)%s", self.client, role, node, exc, following)
                continue
            with self._lock:
                self._left.pop(node, None)
            log.info("%s %s connected to broker node %s", self.client, role, node)
            return node, opened
        raise ConnectionClosed(f"no broker node answers: {', '.join(failures)}")

    def seen_down(self, node: Node, reason: str) -> None:
        """A probe found ``node`` down: try it last (nothing to log: the prober reports it)."""
        with self._lock:
            self._left[node] = reason

    def lost(self, node: Node, role: str, reason: str) -> None:
        """A connection to ``node`` went away: say why, and start elsewhere next time."""
        with self._lock:
            self._left[node] = reason
        log.warning("%s %s left broker node %s: %s", self.client, role, node, reason)
