"""``mq.cfg``: which transport carries actions (the embedded SQLite queue or RabbitMQ) and how.

``host`` is one broker node or a cluster's nodes, comma-separated (``config/hostlist.py``);
it is checked here against ``port`` (an entry without a port takes it), so that a bad entry stops
the start and ``config check`` with the file, the key and the line.
"""

from __future__ import annotations

import re
from pathlib import Path

from enstratus_workers.config.cfgfile import CfgKey, read_cfg
from enstratus_workers.config.files import read_text
from enstratus_workers.config.hostlist import parse_nodes
from enstratus_workers.config.settings import MQSettings, Secret
from enstratus_workers.errors import ConfigError

FILENAME = "mq.cfg"

KEYS = (
    CfgKey("transport", "option('embedded', 'amqp')"),
    CfgKey("host", "string_list()"),
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

# configobj reads "a, b," as the list [a, b]: the empty last entry is only seen in the text
_TRAILING_COMMA = re.compile(r"""^[^"'#]*=[^"'#]*,\s*(?:#.*)?$""")


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
    if "host" in values:
        values["host"] = _host_list(path, values["host"], values.get("port", MQSettings.port), entries["host"].line)
    return MQSettings(**values, source=path)


def _host_list(path: Path, entries: list[str], port: int, line: int | None) -> str:
    """``host`` as one comma-separated text, once every entry is known good."""
    try:
        if line is not None and _TRAILING_COMMA.match(_line_text(path, line)):
            entries = [*entries, ""]
        parse_nodes(entries, port)
    except ValueError as exc:
        raise ConfigError(str(exc), file=path, key="host", line=line) from None
    return ",".join(entries)


def _line_text(path: Path, line: int) -> str:
    found = read_text(path)
    lines = found[0].splitlines() if found else []
    return lines[line - 1] if 0 < line <= len(lines) else ""
