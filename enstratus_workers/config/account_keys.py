"""The ``account.<name>.weight`` keys of ``worker.properties``: each account's share of the relay.

The publisher relays pending jobs in turn by account (``jobs/fairshare.py``); an account's weight
is how many turns it gets for each turn of a weight-1 account, while both have jobs waiting::

    account.42.weight = 3           account 42 gets three jobs relayed for every one of the others
    account.acme-corp.weight = 2

Accounts not named here weigh 1, as do jobs without an account (they share one turn). The name
is the account exactly (``limits.ACCOUNT_RULE``; byte for byte, so ``ACME`` is another
account); it may hold dots, so a key is split at its last part. A name with a blank, ``:`` or
``=`` is written with a backslash before it, as every ``.properties`` key is
(``account.acme\\ corp.weight = 2``).
"""

from __future__ import annotations

import re
from functools import partial

from enstratus_workers.config import converters as conv
from enstratus_workers.config import limits
from enstratus_workers.config.propfile import PropFile

PER_ACCOUNT = re.compile(r"account\.(.+)\.weight")


def read_weights(f: PropFile) -> tuple[tuple[str, int], ...]:
    """``((account, weight), ...)`` in the file's order; problems are recorded on ``f``."""
    weight = partial(conv.integer, lo=limits.RANGES["account.weight"][0], hi=limits.RANGES["account.weight"][1])
    found = []
    for key, entry in f.entries.items():
        m = PER_ACCOUNT.fullmatch(key)
        if not m:
            continue
        if not limits.valid_account(m.group(1)):
            f.error(f"{m.group(1)!r} is not an account name ({limits.ACCOUNT_RULE})", key, entry.line)
            continue
        value = f.get(key, weight, None)
        if value is not None:
            found.append((m.group(1), value))
    return tuple(found)


def known_keys(f: PropFile) -> set[str]:
    """The weight keys the file holds (each is judged by ``read_weights``)."""
    return {key for key in f.entries if PER_ACCOUNT.fullmatch(key)}
