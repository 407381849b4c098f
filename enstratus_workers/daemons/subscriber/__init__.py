"""The subscriber daemon: takes actions off the queues, has worker processes run them, records, then acks.

``daemon`` (the main loop: check deliveries against their job rows, dispatch, settle, shut down
in order), ``intake`` (the thread that owns the queue connection), ``pool`` (the worker
processes: spawn, hand out, supervise), ``worker_socket`` (the frames on the Unix socket to a
worker), ``scaling`` (autoscaling between min and max), ``recorder`` (the thread that writes
outcomes and events before anything is acked).
"""
