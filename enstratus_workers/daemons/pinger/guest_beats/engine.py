"""One round of guest heartbeats: PING every target's agent, many at once, each within a timeout.

asyncio because a round is thousands of waits on the network and almost no work: one thread
holds them all. A semaphore bounds how many connections are open at once (file descriptors,
the agents' accept backlogs, the pinger's own ephemeral ports), and ``asyncio.wait_for`` bounds
each target, so a round takes at most about ``ceil(len(targets) / concurrency) * timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from enstratus_workers.guest import client
from enstratus_workers.guest.protocol import ProtocolError

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 500
DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Target:
    """A guest to beat: the platform's server id and where its agent listens.

    ``agent_id`` is the id the guest's agent answers with (what the guest knows itself as: the
    cloud's node id). When given, a PONG with another id counts as down: the address now
    belongs to another guest (clouds reuse addresses), so the server we know is not there.
    """

    server_id: str
    host: str
    port: int
    agent_id: str | None = None


@dataclass(frozen=True)
class BeatResult:
    """``up`` when the agent answered PONG with the expected server id within the timeout."""

    server_id: str
    up: bool
    latency_ms: float | None
    error: str | None = None


async def beat_one(target: Target, timeout: float) -> BeatResult:
    """PING one agent; never raises for the target's failures, only reports them."""
    started = time.perf_counter()
    try:
        pong = await asyncio.wait_for(client.async_ping(target.host, target.port), timeout)
    except asyncio.TimeoutError:
        return BeatResult(target.server_id, False, None, f"no answer within {timeout:g}s")
    except (OSError, ProtocolError, ValueError) as exc:  # ValueError: an over-long answer line
        return BeatResult(target.server_id, False, None, _describe(exc))
    latency = (time.perf_counter() - started) * 1000.0
    if target.agent_id is not None and pong.server_id != target.agent_id:
        return BeatResult(target.server_id, False, latency, f"answered as {pong.server_id!r}")
    return BeatResult(target.server_id, True, latency)


async def beat_all(targets: list[Target], timeout: float = DEFAULT_TIMEOUT,
                   concurrency: int = DEFAULT_CONCURRENCY) -> list[BeatResult]:
    """Beat every target once, at most ``concurrency`` at a time; results in the targets' order."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, not {timeout}")
    gate = asyncio.Semaphore(concurrency)

    async def gated(target: Target) -> BeatResult:
        async with gate:
            return await beat_one(target, timeout)

    started = time.perf_counter()
    results = list(await asyncio.gather(*(gated(t) for t in targets)))
    log.debug("heartbeat round: %d/%d up in %.2fs", sum(r.up for r in results), len(results),
              time.perf_counter() - started)
    return results


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {text}"
