"""``mq.cfg``: which transport carries actions (the embedded SQLite queue or RabbitMQ) and how."""

from __future__ import annotations

from pathlib import Path

from enstratus_workers.config.cfgfile import CfgKey, read_cfg
from enstratus_workers.config.settings import MQSettings, Secret

FILENAME = "mq.cfg"

KEYS = (
    CfgKey("transport", "option('embedded', 'amqp')"),
    CfgKey("host", "string(min=1)"),
    CfgKey("port", "integer(1, 65535)"),
    CfgKey("user", "string()"),
    CfgKey("password", "string()"),
    CfgKey("vhost", "string(min=1)"),
    CfgKey("ssl", "boolean()"),
    CfgKey("heartbeat", "integer(0, 3600)"),
    CfgKey("prefetch", "integer(1, 65535)"),
    CfgKey("confirm_window", "integer(1, 100000)"),
    CfgKey("exchange", "string(min=1)"),
    CfgKey("queue_prefix", "string()"),
    CfgKey("queue_type", "option('classic', 'quorum')"),
    CfgKey("embedded_path", "string(min=1)"),
)


def read_mq(path: Path) -> MQSettings:
    """The settings in ``path``, the defaults if there is no such file; ConfigError(s) if it is bad."""
    entries = read_cfg(path, KEYS, secret="password")
    if entries is None:
        return MQSettings()
    values = {name: entry.value for name, entry in entries.items()}
    if "password" in values:
        values["password"] = Secret(values["password"])
    if "embedded_path" in values:
        values["embedded_path"] = Path(values["embedded_path"])
    return MQSettings(**values, source=path)
