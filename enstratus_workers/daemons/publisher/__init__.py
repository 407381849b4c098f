"""The publisher daemon, the only writer to the queue.

``daemon`` (the relay of pending jobs from the outbox, with publisher confirms), ``recovery``
(stuck jobs back to the outbox), ``schedules`` (the periodic sync jobs, once per interval per
account across the fleet).
"""
