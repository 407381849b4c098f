"""A JSON-able view of the settings, for ``config check --json`` and the status page.

Secrets show as ``***``; a database URL keeps everything but its password, which is what an
operator checking "which database does it use?" needs to see.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from pathlib import PurePath

from enstratus_workers.config.converters import redact_url
from enstratus_workers.config.settings import Secret, Settings


def _public(value):
    if isinstance(value, Secret):
        hidden = value.reveal()
        if isinstance(hidden, str) and "://" in hidden:
            return redact_url(hidden)
        return "***" if hidden else ""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _public(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _public(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_public(v) for v in value]
    if isinstance(value, (PurePath, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    return value


def describe(settings: Settings) -> dict:
    """``settings`` as nested dicts, lists, strings and numbers, with no secret in it."""
    return _public(settings)
