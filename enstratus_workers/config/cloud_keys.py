"""The ``cloud.*`` keys of ``worker.properties``: the request rates of the cloud API limits.

Every cloud call of the fleet draws from the budget of its (provider, account) key
(``cloud/limiter.py``); the rate of a key is the most specific of::

    cloud.rate = 10                   requests per second of every key not named below
    cloud.rate.ec2 = 5                every account on the ec2 provider
    cloud.rate.ec2.42 = 2             account 42 on ec2 (fractions allowed: 0.5 is one call in 2 s)
    cloud.max_wait = 5                seconds a call may wait for its turn; a longer wait defers the job
    cloud.recover_after = 10          seconds without a throttle between steps back up to the rate

The provider is libcloud's name as the account's KM credential gives it, lowercase; the account
is the rest of the key (it may hold dots), byte for byte. A rate must be a number above 0: zero,
a negative number or a word stops the daemons and ``config check`` with exit 6 naming the key.
"""

from __future__ import annotations

import re

from enstratus_workers.config import converters as conv
from enstratus_workers.config import limits
from enstratus_workers.config.propfile import PropFile
from enstratus_workers.config.settings import CloudRate

DEFAULT_KEY = "cloud.rate"
PER_KEY = re.compile(r"cloud\.rate\.(.+)")
PROVIDER = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
PROVIDER_RULE = "lowercase letters, digits, '_' and '-', as libcloud names providers"


def rate(text: str) -> float:
    """A request rate: requests per second, above 0 (fractions allowed)."""
    lo, hi = limits.RANGES[DEFAULT_KEY]
    return conv.number(text, lo, hi, lo_open=True)


def _split(key: str, rest: str) -> tuple[str, str | None]:
    """``(provider, account or None)`` of ``cloud.rate.<rest>``; ValueError naming the fault."""
    provider, dot, account = rest.partition(".")
    if not PROVIDER.fullmatch(provider):
        hint = f" (write {key.replace(provider, provider.lower(), 1)!r})" if PROVIDER.fullmatch(provider.lower()) else ""
        raise ValueError(f"{provider!r} is not a provider name ({PROVIDER_RULE}){hint}")
    if not dot:
        return provider, None
    if not limits.valid_account(account):   # the one rule of job accounts: a rate is for them
        raise ValueError(f"{account!r} is not an account ({limits.ACCOUNT_RULE})")
    return provider, account


def read_rates(f: PropFile) -> tuple[CloudRate, ...]:
    """The per-provider and per-account rates, in the file's order; problems are recorded on ``f``."""
    found = []
    for key, entry in f.entries.items():
        m = PER_KEY.fullmatch(key)
        if not m:
            continue
        try:
            provider, account = _split(key, m.group(1))
        except ValueError as exc:
            f.error(str(exc), key, entry.line)
            continue
        value = f.get(key, rate, None)
        if value is not None:
            found.append(CloudRate(provider, account, value))
    return tuple(found)


def known_keys(f: PropFile) -> set[str]:
    """The per-key rate keys the file holds (each is judged by ``read_rates``)."""
    return {key for key in f.entries if PER_KEY.fullmatch(key)}

