"""The service as a fleet of hosts: what a host is, where a worker type runs, what every host shows.

- ``placement``: a worker type's placement (``host:NAME``, ``tag:TAG``): parsing, matching a host,
  checking it against the hosts the fleet knows;
- ``joining``: what a daemon does once its databases are open: register its host, check the
  file's placements (exit 6 for one naming no known host);
- ``hosts``: the per-host view (daemons, worker processes, state, last heartbeat) that ``GET
  /hosts``, the status page, ``enstratus-workers status`` and ``monitor`` show, the least loaded
  live host for an instance created without a placement, forgetting the long dead;
- ``hosts_text``: that view as lines of text.
"""
