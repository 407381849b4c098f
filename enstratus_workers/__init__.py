"""enstratus-workers: the worker service of a cloud-management platform.

Four daemons (publisher, subscriber, pinger, worker) move jobs from the provisioning database
through a queue (RabbitMQ or an embedded SQLite file queue) to worker processes that run actions.
"""

__version__ = "0.1.0"
