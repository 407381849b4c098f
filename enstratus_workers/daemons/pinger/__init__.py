"""The pinger daemon: health of the service and heartbeats of the guest VMs.

``daemon`` (the loop), ``health`` (queue, databases, daemons, heartbeat rows: what ``pinger check``,
``status`` and the pages report), ``watchdog`` (restarts this install's dead daemons),
``guest_watch`` / ``guest_check`` / ``guest_health`` (the guest VMs' beats, their record, and
their part in ``pinger check``), ``guest_beats/`` (one asyncio round of PINGs, missed beats to
unreachable, which pinger beats which server).

"Heartbeat" means four different things here; the names keep them apart:

- **Guest beats**: the pinger PINGs each guest VM's agent (port 2003, ``guest.protocol``) every
  ``pinger.guest_interval`` (``guest_beats/``, ``guest_watch``). A guest's standing is a
  ``guest_beats.tracker.GuestHealth`` (up / unreachable, misses in a row), not the service's
  ``health.Health``.
- **Daemon liveness rows**: every daemon, this one included, renews its row in
  ``db/heartbeats.py`` (``Heartbeat``, ``HeartbeatStore``) with an expiry a little beyond its next
  beat; an expired row is a dead daemon. ``health.check_heartbeats`` reads them, and the pinger
  shards the guests over the pingers whose rows have not expired.
- **``pinger.heartbeat_interval``**: how often the pinger runs its own health round
  (``health.check_health`` and the watchdog) and renews its liveness row, which expires after
  three intervals. Nothing to do with the guests' beats.
- **The AMQP connection heartbeat**: ``heartbeat`` in mq.cfg (``MQSettings.heartbeat``), the
  interval at which pika and RabbitMQ check that a connection is alive (``mq/amqp_common.py``);
  the embedded transport takes two of them as a silent consumer's lease (``mq.embedded_lease``).
"""
