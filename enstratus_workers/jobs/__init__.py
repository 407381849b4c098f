"""A job's life: ``messages`` (what goes on the queue), ``lifecycle`` (statuses, retry or fail,
the delay before the next attempt), ``submit`` (how a job enters the outbox). The job table
itself is ``db/jobs.py``."""
