"""``enstratus-workers pause | resume | pauses``: hold a queue's or an account's jobs in the outbox.

A thin layer over ``db/pauses.py`` (the same store the admin API's routes use): the pause is
fleet-wide, in the provisioning DB. Exit 0 done, 2 an invalid account or queue name or an
unknown queue (the message names it).
"""

from __future__ import annotations

from .cli import EXIT_USAGE, _dbs, _error, _print, _settings, _ts


def _store(dbs):
    from .db.pauses import fleet_pauses

    return fleet_pauses(dbs)   # its desired state seeds a database no daemon has touched yet


def _target(args) -> tuple[str, str]:
    from .db.pauses import ACCOUNT, QUEUE

    return (QUEUE, args.queue) if args.queue is not None else (ACCOUNT, args.account)


def _text(p) -> str:
    what = f"{p.kind} {p.name}"
    return f"{what}: paused since {_ts(p.since_ms)}" if p.paused else f"{what}: not paused"


def cmd_pause_or_resume(args) -> int:
    from .db.audit import record_cli
    from .db.instances import Invalid, NotFound

    settings = _settings(args)
    dbs = _dbs(args, settings)
    try:
        store = _store(dbs)
        kind, name = _target(args)
        before = store.get(kind, name)

        def audit(status: int, after=None, detail: str | None = None) -> None:   # as the API's are
            record_cli(dbs.provisioning, settings.worker.host_name, f"{kind}.{args.command}", f"{kind} {name}",
                       status, before=before.as_dict(), after=after, detail=detail)
        try:
            done = store.pause(kind, name) if args.command == "pause" else store.resume(kind, name)
        except (Invalid, NotFound) as exc:
            audit(EXIT_USAGE, detail=str(exc))
            _error(exc)
            return EXIT_USAGE
        audit(0, done.as_dict())
        _print(args, done.as_dict(), _text(done))
        return 0
    finally:
        dbs.close()


def cmd_pauses(args) -> int:
    settings = _settings(args)
    dbs = _dbs(args, settings)
    try:
        found = _store(dbs).list()
    finally:
        dbs.close()
    _print(args, [p.as_dict() for p in found], "\n".join(_text(p) for p in found) or "nothing is paused")
    return 0


def add_parsers(sub, common) -> None:
    """The commands, on the CLI's subparsers ``sub`` (``common``: the ``--json`` parent)."""
    for verb, what in (("pause", "hold the jobs of a queue or an account in the outbox, fleet-wide"),
                       ("resume", "relay the jobs of a paused queue or account again")):
        s = sub.add_parser(verb, parents=[common], help=what)
        target = s.add_mutually_exclusive_group(required=True)
        target.add_argument("--queue", help="a queue the fleet knows")
        target.add_argument("--account", help="an account (the job's account)")
        s.set_defaults(func=cmd_pause_or_resume)
    s = sub.add_parser("pauses", parents=[common], help="what is paused, and since when")
    s.set_defaults(func=cmd_pauses)
