"""Guest heartbeats for the pinger: ``engine`` (one asyncio round of PINGs), ``tracker`` (missed
beats -> unreachable, one good beat -> up) and ``sharding`` (which pinger beats which server)."""

from enstratus_workers.daemons.pinger.guest_beats.engine import (
                                                 BeatResult,
                                                 Target,
                                                 beat_all,
                                                 beat_one,
)
from enstratus_workers.daemons.pinger.guest_beats.sharding import my_share, owner
from enstratus_workers.daemons.pinger.guest_beats.tracker import (
                                                 UNKNOWN,
                                                 UNREACHABLE,
                                                 UP,
                                                 GuestHealth,
                                                 HealthTracker,
                                                 Transition,
                                                 next_health,
)

__all__ = ["BeatResult", "GuestHealth", "HealthTracker", "Target", "Transition", "UNKNOWN",
           "UNREACHABLE", "UP", "beat_all", "beat_one", "my_share", "next_health", "owner"]
