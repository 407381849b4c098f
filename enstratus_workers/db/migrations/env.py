"""Alembic's environment: run one chain over the connection ``db/migrate.py`` opened and locked.

There is no alembic.ini and no URL here: ``migrate.alembic_config`` passes the connection (made
from the service's own config files) and the chain's version table in ``config.attributes``. In
``--sql`` mode the connection only lends Alembic the server's dialect; nothing runs on it.
"""

from alembic import context

attributes = context.config.attributes
context.configure(
    connection=attributes["connection"],
    version_table=attributes["version_table"],
    transaction_per_migration=True,      # each revision and its version row commit together
    literal_binds=context.is_offline_mode(),
)
with context.begin_transaction():
    context.run_migrations()
