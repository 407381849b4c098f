"""Acting on clouds through Apache Libcloud: the server actions and the "local" cloud.

``actions`` (``server.launch``/``terminate``/``reboot``/``sync``, ``guest.collect_logs`` and
``register_cloud_actions``), ``credentials`` (the one place that turns a KM credential into a
provider, key and secret), ``drivers`` (a libcloud driver for an account), ``servers`` (server
objects in the persistence layer), ``local_driver`` (the loopback cloud whose machines are
guest-agent processes) with ``local_state``, ``local_agents`` and ``process``.

Nothing here is imported by ``import enstratus_workers.cloud``: libcloud loads on first use.
"""
