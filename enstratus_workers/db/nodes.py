"""Is a node fit to be written to? One short connection per node asks it.

Healthy means: it answers, and it is a synced Galera member (``wsrep_ready = ON`` and
``wsrep_local_state = 4``). A server that is not part of a cluster (``wsrep_on`` OFF, or a
MySQL without the variable) answers for itself and counts as healthy too, so one URL syntax
serves a cluster and a plain server alike. A joiner, a donor (an rsync donor blocks writes
while it copies), a node cut off from the primary component: not healthy.

The probes of several nodes run at once, so a round costs the slowest node's answer (at most
``PROBE_TIMEOUT_S``), not their sum.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from sqlalchemy.engine import URL

from ..config import dburl
from ..config.dburl import Node

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0   # connect and read: a node slower than this to say "synced" is not fit
SYNCED = 4              # wsrep_local_state of a synced member


@dataclass(frozen=True)
class NodeState:
    """What a probe found: ``state`` is for people ("synced", "unreachable: ...")."""

    node: Node
    healthy: bool
    state: str

    def __str__(self) -> str:
        return f"{self.node} {self.state}"


def judge(node: Node, wsrep_on: str | None, status: dict[str, str]) -> NodeState:
    """The verdict on a node from its ``wsrep_on`` variable and ``wsrep_%`` status values."""
    if (wsrep_on or "OFF").upper() != "ON":
        return NodeState(node, True, "answers (no Galera)")
    comment = status.get("wsrep_local_state_comment") or "?"
    if status.get("wsrep_ready", "").upper() != "ON":
        return NodeState(node, False, f"not ready ({comment})")
    if status.get("wsrep_local_state") != str(SYNCED):
        return NodeState(node, False, f"not synced ({comment})")
    return NodeState(node, True, "synced")


class Prober:
    """Probes the nodes of one URL, connecting as that URL's user (password included)."""

    def __init__(self, url: URL, timeout: float = PROBE_TIMEOUT_S):
        dialect_cls = url.get_dialect()
        self._dialect = dialect_cls(dbapi=dialect_cls.import_dbapi())
        _, params = self._dialect.create_connect_args(url)
        # TLS as the writer's connections make it (a probe is a new connection each health round)
        self._params = {**dburl.driver_tls(url.query), **params}
        self._params.pop("database", None)   # a node that lacks it still answers for its health
        self.timeout = timeout

    def probe(self, node: Node) -> NodeState:
        params = {**self._params, "host": node.host, "port": node.port,
                  "connect_timeout": self.timeout, "read_timeout": self.timeout,
                  "write_timeout": self.timeout}
        try:
            conn = self._dialect.loaded_dbapi.connect(**params)
        except Exception as exc:  # noqa: BLE001 - any failure to connect: unreachable, and why
            return NodeState(node, False, f"unreachable ({_reason(exc)})")
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
                row = cur.fetchone()
                cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                            "('wsrep_ready', 'wsrep_local_state', 'wsrep_local_state_comment')")
                status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
            return judge(node, row[1] if row else None, status)
        except Exception as exc:  # noqa: BLE001 - a node that cannot answer this is not fit
            return NodeState(node, False, f"does not answer ({_reason(exc)})")
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass

    def probe_all(self, nodes: Sequence[Node]) -> list[NodeState]:
        """Every node's state, in the order given, probed at once."""
        if len(nodes) <= 1:
            return [self.probe(n) for n in nodes]
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="db-probe") as pool:
            return list(pool.map(self.probe, nodes))


def first_healthy(states: Sequence[NodeState], skip: Sequence[Node] = ()) -> Node | None:
    """The writer rule: the first healthy node in the list's order (``skip`` left out)."""
    return next((s.node for s in states if s.healthy and s.node not in skip), None)


def _reason(exc: BaseException) -> str:
    """The driver's words, one line, short (they name host and user, never the password):
    "Connection refused" or "timed out" rather than the whole "Can't connect ..." sentence."""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        text = str(args[1])
        if args[0] == 2003 and (cause := re.search(r"\((?:\[Errno -?\d+\] )?([^()]+)\)\s*$", text)):
            return cause.group(1)
        text = f"{args[0]}: {text}"
    else:
        text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
