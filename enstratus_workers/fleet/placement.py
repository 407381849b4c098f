"""Where a worker type runs: every host, or the hosts a placement names by name or by tag.

A placement is a list of targets, ``host:NAME`` (that host) and ``tag:TAG`` (every host carrying
the tag in its ``host.tags``); a type runs on a host that any target matches. No placement (the
default, written ``*``) is every host. It is kept in canonical form, a tuple of target strings in
the order given, so the file (``worker.<type>.placement = host:web-1, tag:winxp``), the admin API
(``"placement": ["host:web-1", "tag:winxp"]``) and the database hold the same text.

Names compare byte for byte, as every identity of the service does: ``tag:WinXP`` is not
``tag:winxp``.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from enstratus_workers.config import limits

EVERYWHERE = "*"
HOST, TAG = "host", "tag"
RULE = (f"a comma-separated list of host:NAME and tag:TAG (at most {limits.MAX_PLACEMENT}), "
        f"or {EVERYWHERE} for every host")


def _shown(text: str) -> str:
    return ascii(text if len(text) <= 60 else text[:57] + "...")


def target(text: str) -> str:
    """One target, checked: ``host:NAME`` or ``tag:TAG``; ``ValueError`` saying what is wrong."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in (HOST, TAG):
        raise ValueError(f"{_shown(text)} is not a placement target: use host:NAME or tag:TAG")
    if kind == HOST and not limits.valid_host_name(name):
        raise ValueError(f"{_shown(text)} does not name a host: a host name is {limits.HOST_NAME_RULE}")
    if kind == TAG and not limits.TAG_NAME.fullmatch(name):
        raise ValueError(f"{_shown(text)} does not name a tag: a tag is {limits.TAG_RULE}")
    return text


def parse(items: Iterable[str] | str) -> tuple[str, ...]:
    """The canonical placement of ``items`` (a list, or comma-separated text): ``()`` for every
    host (``*``, or nothing), else the targets in the order given. ``ValueError`` if one is bad,
    repeated, ``*`` is mixed with targets, or there are more than ``limits.MAX_PLACEMENT``."""
    if isinstance(items, str):
        items = [i.strip() for i in items.split(",") if i.strip()]
    items = list(items)
    if items == [EVERYWHERE] or not items:
        return ()
    if EVERYWHERE in items:
        raise ValueError(f"{EVERYWHERE} (every host) cannot be combined with other targets")
    if len(items) > limits.MAX_PLACEMENT:
        raise ValueError(f"names {len(items)} targets: at most {limits.MAX_PLACEMENT}")
    seen: list[str] = []
    for item in items:
        target(item)
        if item in seen:
            raise ValueError(f"{_shown(item)} is listed twice")
        seen.append(item)
    return tuple(seen)


def shown(placement: Sequence[str]) -> list[str]:
    """The placement as the API and ``describe`` show it: ``["*"]`` for every host."""
    return list(placement) or [EVERYWHERE]


def runs_on(placement: Sequence[str], host: str, tags: Iterable[str] = ()) -> bool:
    """Whether a type with ``placement`` runs on the host named ``host`` carrying ``tags``."""
    if not placement:
        return True
    mine = {f"{HOST}:{host}", *(f"{TAG}:{t}" for t in tags)}
    return any(t in mine for t in placement)


def unknown(placement: Sequence[str], known: Mapping[str, Iterable[str]]) -> list[str]:
    """The targets of ``placement`` that match no host of ``known`` (host name -> its tags)."""
    names = set(known)
    tags = {t for host_tags in known.values() for t in host_tags}
    out = []
    for t in placement:
        kind, _, name = t.partition(":")
        if (kind == HOST and name not in names) or (kind == TAG and name not in tags):
            out.append(t)
    return out


def describe_unknown(targets: Sequence[str], known: Mapping[str, Iterable[str]]) -> str:
    """The operator's message for targets no known host matches."""
    hosts = ", ".join(sorted(known)) or "none yet"
    tags = ", ".join(sorted({t for ts in known.values() for t in ts})) or "none"
    return (f"placement names {', '.join(targets)}, which no known host matches "
            f"(known hosts: {hosts}; their tags: {tags}; a host becomes known when one of its "
            "daemons first starts)")
