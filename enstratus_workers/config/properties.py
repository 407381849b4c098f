"""Java ``.properties`` files, read with the rules of ``java.util.Properties.load``.

The files come from a Java service and operators edit them with Java habits, so the rules are
Java's rather than configparser's: ``=``, ``:`` or blanks separate key and value; ``#``/``!`` start
a comment line; an odd number of trailing backslashes joins the next line (its leading blanks
dropped); ``\\t \\n \\r \\f \\uXXXX`` are escapes and a backslash before any other character stands
for that character. Unlike Java, every entry keeps the number of the line it starts on, so errors
found later can point the operator at it, and a malformed escape is an error rather than a
surprise value.

A line holding only a backslash continues into nothing: the logical line is still empty, so, as in
Java (9 and later), the next line starts afresh (blank, ``#`` or ``!`` lines are skipped, no entry
is made). Java's one exception is kept too: if the file ends right after that backslash (or after
the ``\n`` or lone ``\r`` that ends its line), Java reads an entry with an empty key and value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from enstratus_workers.config.files import read_text
from enstratus_workers.errors import ConfigError

# Java's line terminators only (str.splitlines knows more), kept: Java tells "\r\n" from "\n" at EOF
_BREAK = re.compile(r"(\r\n|\r|\n)")
_BLANK = " \t\f"
_SEPARATORS = "=:"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_HEX = frozenset("0123456789abcdefABCDEF")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAILING_BACKSLASHES = re.compile(r"\\+$")


class Entry(NamedTuple):
    """A value and the line its logical line starts on (``None`` when it came from a default)."""

    value: object
    line: int | None


def read_properties(path: Path) -> dict[str, Entry] | None:
    """Entries of the file at ``path`` in file order, or ``None`` if it does not exist."""
    found = read_text(path)
    return None if found is None else parse_properties(found[0], file=path)


def parse_properties(text: str, file=None, errors: list | None = None) -> dict[str, Entry]:
    """Entries of ``text`` in order of first appearance; a repeated key keeps its last value, as Java.

    A malformed escape raises ``ConfigError``, unless an ``errors`` list is given: then the error
    is appended to it, the line skipped, and the rest of the file still read.
    """
    entries: dict[str, Entry] = {}
    for logical, number in _logical_lines(text):
        raw_key, raw_value = _split(logical)
        try:
            key = _unescape(raw_key, file, number, None)
            entries[key] = Entry(_unescape(raw_value, file, number, key), number)
        except ConfigError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return entries


def _odd_backslashes(line: str) -> bool:
    run = _TRAILING_BACKSLASHES.search(line)
    return run is not None and len(run.group()) % 2 == 1


def _logical_lines(text: str):
    """Yield ``(logical_line, number_of_its_first_natural_line)`` with comments and blanks skipped."""
    pieces = _BREAK.split(text)
    natural, breaks = pieces[0::2], pieces[1::2]
    i = 0
    while i < len(natural):
        number = i + 1
        line = natural[i].lstrip(_BLANK)
        i += 1
        if not line or line[0] in "#!":
            continue  # a comment never continues, even if it ends in a backslash
        if line == "\\":
            if _file_ends_after_backslash(natural, breaks, i):
                yield "", number
            continue  # nothing to continue: the next line starts a logical line of its own
        parts = []
        # Parity of the newest segment alone decides: the joined part before it always ends in an
        # even run, so a segment that is all backslashes cannot change the answer.
        while _odd_backslashes(line):
            parts.append(line[:-1])
            if i == len(natural):
                line = ""  # a backslash at the very end of the file is dropped
                break
            line = natural[i].lstrip(_BLANK)
            i += 1
        parts.append(line)
        yield "".join(parts), number


def _file_ends_after_backslash(natural: list[str], breaks: list[str], i: int) -> bool:
    """Whether the text ends right after the backslash ending ``natural[i - 1]``, or after the
    one-character terminator of that line: then Java's ``LineReader`` meets the end of its input
    while the backslash still counts, and hands ``load`` an empty line (an entry "" = "").
    After a ``\\r\\n`` it has already moved past the backslash and reads nothing."""
    if i == len(natural):
        return True
    return i == len(natural) - 1 and natural[i] == "" and breaks[i - 1] != "\r\n"


def _split(line: str) -> tuple[str, str]:
    """Key and value text (still escaped) of a logical line, by Java's ``Properties.load0`` rules."""
    n = len(line)
    end = 0
    value_start = n
    has_separator = False
    escaped = False
    while end < n:
        c = line[end]
        if not escaped and c in _SEPARATORS:
            value_start, has_separator = end + 1, True
            break
        if not escaped and c in _BLANK:
            value_start = end + 1
            break
        escaped = c == "\\" and not escaped
        end += 1
    # blanks around the separator are skipped; one `=` or `:` may follow blanks after the key
    while value_start < n:
        c = line[value_start]
        if c not in _BLANK:
            if has_separator or c not in _SEPARATORS:
                break
            has_separator = True
        value_start += 1
    return line[:end], line[value_start:]


def _unescape(text: str, file, line: int, key: str | None) -> str:
    """Resolve escapes; the error names the key (if known) but never shows the value (may be secret)."""
    if "\\" not in text:
        return _check_surrogates(text, file, line, key)
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        if i == n:
            break  # unreachable after line joining; dropped as Java drops a final backslash
        c = text[i]
        i += 1
        if c == "u":
            digits = text[i:i + 4]
            if len(digits) < 4 or not _HEX.issuperset(digits):
                where = "key" if key is None else "value"
                raise ConfigError(f"malformed \\uXXXX escape in the {where} (needs four hex digits)",
                                  file=file, key=key, line=line)
            out.append(chr(int(digits, 16)))
            i += 4
        else:
            out.append(_ESCAPES.get(c, c))
    return _check_surrogates("".join(out), file, line, key)


def _check_surrogates(text: str, file, line: int, key: str | None) -> str:
    """Join ``\\uD83D\\uDE00``-style pairs into one character, as a Java string would read them."""
    if not _SURROGATE.search(text):
        return text
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        raise ConfigError("\\uXXXX escape gives an unpaired UTF-16 surrogate (D800-DFFF)",
                          file=file, key=key, line=line) from None


def escape(text: str, *, key: bool = False) -> str:
    """``text`` written so ``parse_properties`` reads it back unchanged (as Java's ``store`` writes).

    Keys escape every blank; values only a leading one, so trailing blanks survive as in Java.
    Characters outside printable ASCII become ``\\uXXXX`` (astral ones as a surrogate pair).
    """
    out = []
    for i, c in enumerate(text):
        if c == " ":
            out.append("\\ " if key or i == 0 else " ")
        elif c in "\t\n\r\f":
            out.append("\\" + "tnrf"["\t\n\r\f".index(c)])
        elif c in "\\=:#!":
            out.append("\\" + c)
        elif " " < c < "\x7f":
            out.append(c)
        else:
            units = c.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{units[j]:02X}{units[j + 1]:02X}" for j in range(0, len(units), 2))
    return "".join(out)
