"""Turning the entries of a ``.properties`` file into dataclass fields, one table row per key.

Shared by the readers of ``worker.properties`` and ``dasein-persistence.properties``: a row names
the key, the settings field and the converter; only keys the file sets become field values, so the
defaults stay where they are written once, in ``settings.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from enstratus_workers.config import converters
from enstratus_workers.config.files import exposure, read_text
from enstratus_workers.config.problems import unknown_key
from enstratus_workers.config.properties import Entry, parse_properties
from enstratus_workers.config.settings import Secret
from enstratus_workers.errors import ConfigError


@dataclass(frozen=True)
class Prop:
    """One key of a properties file and the settings field it sets."""

    key: str
    field: str
    convert: Callable[[str], object]
    secret: bool = False         # wrapped in Secret; its value never appears in a message
    url: bool = False            # a DB URL: the file holds a secret if it carries a password

    def value(self, text: str):
        converted = self.convert(text)
        return Secret(converted) if self.secret else converted


@dataclass
class PropFile:
    """A properties file as read: its entries, permission bits and the problems found so far."""

    path: Path
    entries: dict[str, Entry]
    mode: int
    errors: list[ConfigError]

    @classmethod
    def read(cls, path: Path) -> "PropFile | None":
        found = read_text(path)
        if found is None:
            return None
        text, mode = found
        errors: list[ConfigError] = []
        return cls(path, parse_properties(text, file=path, errors=errors), mode, errors)

    def error(self, message: str, key: str | None, line: int | None = None) -> None:
        self.errors.append(ConfigError(message, file=self.path, key=key, line=line))

    def convert(self, props: Iterable[Prop]) -> dict[str, object]:
        """Field values for the keys the file sets; a bad value is recorded and left to its default."""
        fields = {}
        for prop in props:
            entry = self.entries.get(prop.key)
            if entry is None:
                continue
            try:
                fields[prop.field] = prop.value(entry.value)
            except ValueError as exc:
                self.error(str(exc), prop.key, entry.line)
        return fields

    def get(self, key: str, convert: Callable[[str], object], default):
        """One converted value outside the table (keys whose names depend on other keys)."""
        entry = self.entries.get(key)
        if entry is None:
            return default
        try:
            return convert(entry.value)
        except ValueError as exc:
            self.error(str(exc), key, entry.line)
            return default

    def line(self, key: str) -> int | None:
        entry = self.entries.get(key)
        return None if entry is None else entry.line

    def check_unknown(self, known: Iterable[str], explain: Mapping[str, str] | None = None) -> None:
        """Report keys not in ``known``; ``explain`` maps such a key to a better reason than 'unknown'."""
        known = set(known)
        for key, entry in self.entries.items():
            if key in known:
                continue
            reason = (explain or {}).get(key)
            if reason:
                self.error(reason, key, entry.line)
            else:
                self.errors.append(unknown_key(key, known, self.path, entry.line))

    def check_exposure(self, props: Iterable[Prop]) -> None:
        """Refuse the file if a URL in it carries a password and group or others may read it."""
        holders = [p.key for p in props if p.url and p.key in self.entries
                   and converters.url_has_password(self.entries[p.key].value)]
        if holders:
            refusal = exposure(self.path, self.mode, holders[0], self.line(holders[0]))
            if refusal is not None:
                self.errors.append(refusal)
