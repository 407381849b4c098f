"""Which KM clients may use which accounts' credentials: ``km-access.cfg``, applied with TLS on.

One line per client: the name its certificate gives it (the worker host name ``tls init`` put in
its subjectAltName and CN), then the accounts it may use, as shell-style patterns::

    worker1.example.com = 42, 43, acme-*
    ops-console = *

A client may get, list, put and delete the credentials of the accounts it is granted, and no
others; ``ping`` (which reveals nothing) is open to every client with a certificate from the CA.
Accounts match byte for byte, as the store compares them (``fnmatchcase``: ``*`` any run of
characters, ``?`` one, ``[...]`` a set). A client not listed may use no account: with TLS the
default is to refuse. Without TLS no client has a verified name, so the list is not applied and
every holder of ``ENCRYPTION_KEY`` may use every account, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from configobj import ConfigObj, ConfigObjError

from enstratus_workers.config.cfgfile import _parse_problem, key_line
from enstratus_workers.config.files import read_text
from enstratus_workers.config.problems import combine, raise_all
from enstratus_workers.errors import ConfigError

# a DNS name (labels of letters, digits, hyphens, underscores), as certificates carry them
_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                   r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATTERN = 128   # as long as an account may be


def valid_client_name(name: str) -> bool:
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class AccessList:
    """Client name -> the account patterns it is granted; ``source`` is the file it came from."""

    grants: dict[str, tuple[str, ...]]
    source: Path | None = None

    def allows(self, names: tuple[str, ...], account: str) -> bool:
        """Whether a client whose certificate gives it ``names`` may use ``account``."""
        return any(fnmatchcase(account, pattern) for name in names for pattern in self.grants.get(name, ()))

    def listed(self, names: tuple[str, ...]) -> bool:
        return any(name in self.grants for name in names)


def load_access(path: Path) -> AccessList:
    """The access list in ``path``; ConfigError(s) naming each bad line, or the missing file."""
    found = read_text(path)
    if found is None:
        raise ConfigError("does not exist; with ssl = true the KM needs its access list (an empty "
                          "file grants nothing)", file=path)
    text, _ = found
    lines = text.splitlines()
    try:
        cfg = ConfigObj(lines, interpolation=False, list_values=True, raise_errors=False, file_error=False)
    except ConfigObjError as exc:
        # the .cfg readers' wording: configobj's own messages would quote whole lines
        raise combine([_parse_problem(err, path) for err in (getattr(exc, "errors", None) or [exc])]) from None
    errors: list[ConfigError] = []
    for name in cfg.sections:
        errors.append(ConfigError("sections are not used here: write 'client name = account patterns'",
                                  file=path, key=name, line=key_line(lines, name)))
    grants = {}
    for name in cfg.scalars:
        value = cfg[name]
        patterns = tuple(p.strip() for p in ([value] if isinstance(value, str) else value))
        line = key_line(lines, name)
        if not valid_client_name(name):
            errors.append(ConfigError("is not a host name (letters, digits, '-', '_', dots)",
                                      file=path, key=name, line=line))
        elif not patterns or not all(patterns):
            errors.append(ConfigError("needs account patterns, comma-separated (* for every account)",
                                      file=path, key=name, line=line))
        elif any(len(p) > MAX_PATTERN or _CONTROL.search(p) for p in patterns):
            errors.append(ConfigError(f"account patterns must be at most {MAX_PATTERN} printable characters",
                                      file=path, key=name, line=line))
        else:
            grants[name] = patterns
    raise_all(errors)
    return AccessList(grants, path)
