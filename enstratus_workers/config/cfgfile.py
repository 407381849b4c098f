"""``.cfg`` files: configobj syntax, checked against a configspec by configobj's ``Validator``.

The check names in a spec are validate's own (``integer(1, 65535)``, ``boolean()``, ``option(...)``)
but are bound to ``converters`` so a ``.cfg`` file reads ``yes`` or ``1e3`` exactly as a
``.properties`` file does, and so every failure carries a message of ours: validate's messages
repeat the value, which for a password is a leak. configobj knows no line numbers for values, so
the line of a key is found by scanning the text. Defaults are not in the specs: they are the field
defaults of the dataclasses in ``settings.py``, and a reader only passes on the keys a file sets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from configobj import ConfigObj, ConfigObjError, DuplicateError, NestingError, flatten_errors, get_extra_values
from configobj.validate import ValidateError, Validator, VdtValueError

from enstratus_workers.config import converters
from enstratus_workers.config.files import exposure, read_text
from enstratus_workers.config.problems import combine, flatten, raise_all, unknown_key
from enstratus_workers.config.properties import Entry
from enstratus_workers.errors import ConfigError

_BREAK = re.compile(r"\r\n|\r|\n")
_KEY_OF_LINE = re.compile(r"""\s*(["']?)(.*?)\1\s*=""")


@dataclass(frozen=True)
class CfgKey:
    """One key of a ``.cfg`` file: its validate check and what to say when a required one is absent."""

    name: str
    check: str                  # e.g. "integer(1, 65535)"; no default= here (see module doc)
    required: bool = False
    missing: str = "is required but missing"

    def spec_line(self) -> str:
        if self.required:
            return f"{self.name} = {self.check}"
        head, _, args = self.check.rstrip().rpartition("(")
        inner = args[:-1].strip()
        return f"{self.name} = {head}({inner + ', ' if inner else ''}default=None)"


class _Invalid(VdtValueError):
    """A failed check whose message is ours, and so safe to show (it never holds a secret)."""

    def __init__(self, message):
        ValidateError.__init__(self, message)


def _bound(text):
    """A bound from a spec (validate passes them as text): an int if it reads as one."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def _one(value) -> str:
    if not isinstance(value, str):
        raise ValueError("expected one value but got a list: put the value in quotes if it contains a comma")
    return value


def _string(value, min="0"):
    text = _one(value)
    if len(text.strip()) < int(min):
        raise ValueError("must not be empty")
    return text


def _string_list(value):
    """A comma-separated list, as configobj split it or as one quoted string: its items, stripped
    (empty ones kept, for the reader to report)."""
    return [item.strip() for item in (value if isinstance(value, list) else value.split(","))]


def _integer(value, min=None, max=None):
    return converters.integer(_one(value), _bound(min), _bound(max))


def _float(value, min=None, max=None, above=None):
    if above is not None:
        return converters.number(_one(value), _bound(above), _bound(max), lo_open=True)
    return converters.number(_one(value), _bound(min), _bound(max))


def _adapt(convert):
    def check(value, *args, **kwargs):
        try:
            return convert(value, *args, **kwargs)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    return check


_CHECKS = {
    "string": _adapt(_string),
    "string_list": _adapt(_string_list),
    "integer": _adapt(_integer),
    "float": _adapt(_float),
    "boolean": _adapt(lambda value: converters.boolean(_one(value))),
    "option": _adapt(lambda value, *options: converters.choice(_one(value), options)),
    "cidr_list": _adapt(converters.cidr_list),
    "key32": _adapt(lambda value: converters.encryption_key(_one(value))),
}


def key_line(lines: list[str], key: str) -> int | None:
    """The 1-based line that sets ``key`` (or opens section ``key``), found by scanning the text."""
    name = re.escape(key)
    pattern = re.compile(rf"""\s*(?:(["']?){name}\1\s*=|\[+\s*(["']?){name}\2\s*\]+)""")
    for number, line in enumerate(lines, 1):
        if pattern.match(line):
            return number
    return None


def set_line(text: str, key: str) -> int | None:
    """The line that gives ``key`` a non-empty value, judged from the raw text.

    Used for the permission check, which must hold even when the file does not parse.
    """
    pattern = re.compile(rf"""\s*(["']?){re.escape(key)}\1\s*=(?!\s*(?:""|'')?\s*(?:#.*)?$)""")
    for number, line in enumerate(_BREAK.split(text), 1):
        if pattern.match(line):
            return number
    return None


def _parse_problem(err, file) -> ConfigError:
    line_text = getattr(err, "line", "") or ""
    found = _KEY_OF_LINE.match(line_text)
    key = found.group(2).strip() if found else None
    number = getattr(err, "line_number", None)
    # configobj's own messages quote the whole line, password included: say it in our words
    if isinstance(err, DuplicateError):
        reason = "is set twice (a .cfg file allows each key once)"
    elif isinstance(err, NestingError):
        reason = "bad [section] nesting"
    elif str(err).startswith("Parse error in value"):
        reason = "cannot parse the value (unbalanced quotes, or an empty item in a comma-separated list?)"
    else:
        reason, key = "cannot parse this line: expected 'key = value'", None
    return ConfigError(reason, file=file, key=key, line=number)


def parse_cfg(text: str, keys, file: Path | None = None) -> dict[str, Entry]:
    """Converted values of the keys ``text`` sets, with their lines; every problem as ConfigError(s)."""
    lines = _BREAK.split(text)
    try:
        cfg = ConfigObj(lines, configspec=[k.spec_line() for k in keys], interpolation=False,
                        list_values=True, raise_errors=False, file_error=False)
    except ConfigObjError as exc:
        raise combine([_parse_problem(err, file) for err in (getattr(exc, "errors", None) or [exc])]) from None
    by_name = {k.name: k for k in keys}
    errors = []
    # The files are flat. A [section] is an error, and must go before validating: validate
    # crashes on a section named like one of the spec's keys.
    for name in list(cfg.sections):
        if name in by_name:
            reason = f"{name!r} is a key of this file, not a [section]: write '{name} = value'"
            errors.append(ConfigError(reason, file=file, key=name, line=key_line(lines, name)))
        else:
            errors.append(unknown_key(name, by_name, file, key_line(lines, name), "section"))
        del cfg[name]
    result = cfg.validate(Validator(_CHECKS), preserve_errors=True)
    for _, name, err in ([] if result is True else flatten_errors(cfg, result)):
        if name is None or name not in by_name:
            continue
        if err is False:
            reason = by_name[name].missing
        elif isinstance(err, _Invalid):
            reason = str(err)
        else:
            reason = "invalid value"
        errors.append(ConfigError(reason, file=file, key=name, line=key_line(lines, name)))
    for _, name in get_extra_values(cfg):
        errors.append(unknown_key(name, by_name, file, key_line(lines, name)))
    errors.sort(key=lambda e: e.line or 0)
    raise_all(errors)
    return {name: Entry(cfg[name], key_line(lines, name))
            for name in by_name if name in cfg.scalars and name not in cfg.defaults}


def read_cfg(path: Path, keys, secret: str | None = None) -> dict[str, Entry] | None:
    """``parse_cfg`` of the file at ``path``, or ``None`` if there is no such file.

    If the file gives the ``secret`` key a value, it is refused when group or others can read it,
    whether or not the rest of it is valid.
    """
    found = read_text(path)
    if found is None:
        return None
    text, mode = found
    errors: list[ConfigError] = []
    line = set_line(text, secret) if secret else None
    refusal = exposure(path, mode, secret, line) if line else None
    if refusal is not None:
        errors.append(refusal)
    try:
        entries = parse_cfg(text, keys, path)
    except ConfigError as exc:
        errors.extend(flatten(exc))
    raise_all(errors)
    return entries
