"""The guest agent: what runs inside a VM the platform manages, and how workers talk to it.

``protocol`` (the line protocol on the agent port, 2003 in real guests), ``server`` (the
asyncio side that answers it), ``agent`` (one agent: a process or a thread), ``multi`` (many
agents in one process, for benchmarks) and ``client`` (the workers' and the pinger's side).
"""

from enstratus_workers.guest.protocol import DEFAULT_AGENT_PORT, LogChunk, Pong, ProtocolError

__all__ = ["DEFAULT_AGENT_PORT", "LogChunk", "Pong", "ProtocolError"]
