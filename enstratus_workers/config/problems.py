"""Gathering every problem of a config pass, so an operator fixes them all in one round.

A daemon that stops on the first bad value makes the operator restart it once per typo; the readers
therefore collect ``ConfigError``\\ s and raise them together at the end.
"""

from __future__ import annotations

import difflib

from enstratus_workers.errors import ConfigError


class ConfigErrors(ConfigError):
    """Several config problems at once; ``errors`` holds each, the first one gives file/key/line."""

    def __init__(self, errors):
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.reason, file=first.file, key=first.key, line=first.line)
        self.args = ("\n".join(str(e) for e in self.errors),)


def flatten(exc: ConfigError) -> list[ConfigError]:
    """The individual problems inside ``exc`` (itself, unless it is a ``ConfigErrors``)."""
    return list(exc.errors) if isinstance(exc, ConfigErrors) else [exc]


def combine(errors: list[ConfigError]) -> ConfigError:
    """The single error, or all of them as one ``ConfigErrors``; ``errors`` must not be empty."""
    return errors[0] if len(errors) == 1 else ConfigErrors(errors)


def raise_all(errors: list[ConfigError]) -> None:
    """Raise nothing if ``errors`` is empty, else everything in it at once."""
    if errors:
        raise combine(errors)


def did_you_mean(word: str, known) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, case-insensitively, or ``''``."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def unknown_key(word: str, known, file, line, what: str = "key") -> ConfigError:
    return ConfigError(f"unknown {what}{did_you_mean(word, known)}", file=file, key=word, line=line)
