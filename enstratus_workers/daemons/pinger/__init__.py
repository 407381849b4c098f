"""The pinger daemon: health of the service and heartbeats of the guest VMs.

``daemon`` (the loop), ``health`` (queue, databases, daemons, heartbeat rows: what ``pinger check``,
``status`` and the pages report), ``watchdog`` (restarts this install's dead daemons),
``guest_watch`` / ``guest_check`` / ``guest_health`` (the guest VMs' beats, their record, and
their part in ``pinger check``), ``guest_beats/`` (one asyncio round of PINGs, missed beats to
unreachable, which pinger beats which server).
"""
