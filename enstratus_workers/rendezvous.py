"""Rendezvous (highest-random-weight) hashing: the project's one way to share things out with no
coordination but a common list.

Each (chooser, item) pair gets a weight from a stable hash (BLAKE2b, not ``hash()``: every
process on every host must compute the same weights). The pinger's guest sharding gives each
server to the live pinger with the highest weight; the AMQP transport ranks a cluster's nodes by
their weight for its process. Either way, when one of the list goes, exactly what it held moves,
spread evenly over the rest, and nothing else does.
"""

from __future__ import annotations

import hashlib


def weight(chooser: str, item: str) -> int:
    digest = hashlib.blake2b(f"{chooser}\x00{item}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")
