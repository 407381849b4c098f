"""``enstratus-workers dead list | retry``: the dead jobs, the dead letters, and the re-drive.

A thin layer, as the CLI is: ``dead retry`` calls ``jobs/redrive.py``, the function the admin
API's ``POST /jobs/{id}/retry`` and ``POST /jobs/dead/retry`` call too, and records itself in
the audit log (``cli:<unix user>``). Exit 0 done, 1 no dead job matched the ids given, 2 no ids
and no ``--all``.
"""

from __future__ import annotations

from .cli import EXIT_FAILED, EXIT_USAGE, _dbs, _error, _layout, _print, _settings
from .jobs import lifecycle


def cmd_dead_list(args) -> int:
    from .mq import open_transport

    settings = _settings(args)
    dbs = _dbs(args, settings)
    try:
        jobs = dbs.jobs.list(status=lifecycle.DEAD, limit=args.limit)
        queues = dbs.desired.queues(settings.worker.all_queues)
    finally:
        dbs.close()
    letters = []
    with open_transport(settings.mq, _layout(args), client_name="cli") as t:
        for q in queues:
            letters.extend(t.dead_letters(q, limit=args.limit))
    job_ids = {str(j.job_id) for j in jobs}
    orphans = [d for d in letters if d.message_id not in job_ids]
    rows = [f"{'ID':>8}  {'ACTION':<20} {'QUEUE':<12} {'ATT':>3}  ERROR"]
    rows += [f"{j.job_id:>8}  {j.action[:20]:<20} {j.queue[:12]:<12} {j.attempts:>3}  {(j.error or '')[:70]}"
             for j in jobs]
    if orphans:
        rows.append(f"{len(orphans)} dead letter(s) belong to no job (undecodable messages):")
        rows += [f"  {d.queue}: {d.message_id} {d.reason or ''} {d.body[:60]!r}" for d in orphans]
    data = {"jobs": [j.as_dict() for j in jobs],
            "dead_letters": [{"queue": d.queue, "message_id": d.message_id, "reason": d.reason,
                              "dead_at_ms": d.dead_at_ms, "job": d.message_id in job_ids} for d in letters]}
    _print(args, data, "\n".join(rows) if jobs or orphans else "no dead jobs")
    return 0


def cmd_dead_retry(args) -> int:
    from .db.audit import record_cli
    from .jobs.redrive import redrive
    from .mq import open_transport

    if not args.all and not args.job_ids:
        _error("name the jobs to retry, or --all")
        return EXIT_USAGE
    settings, layout = _settings(args), _layout(args)

    def purge(queue, message_ids):   # opened only once the jobs are pending again
        with open_transport(settings.mq, layout, client_name="cli") as t:
            return t.purge_dead(queue, message_ids)

    dbs = _dbs(args, settings)
    try:
        done = redrive(dbs.jobs, purge, settings.worker.max_attempts, None if args.all else args.job_ids)
        code = 0 if done.jobs or args.all else EXIT_FAILED
        record_cli(dbs.provisioning, settings.worker.host_name, "jobs.retry_dead" if args.all else "job.retry",
                   "every dead job" if args.all else "jobs " + ", ".join(map(str, args.job_ids)), code,
                   after={"redriven": done.job_ids}, detail=done.purge_error)
    finally:
        dbs.close()
    if done.purge_error:
        _error(f"the dead letters of these jobs stay in their queues: {done.purge_error}")
    _print(args, done.job_ids, f"re-driven {len(done.jobs)} job(s): " + ", ".join(map(str, done.job_ids))
           if done.jobs else "no dead job matched")
    return code


def add_parsers(sub, common) -> None:
    """The commands, on the CLI's subparsers ``sub`` (``common``: the ``--json`` parent)."""
    s = sub.add_parser("dead", help="dead jobs and dead letters")
    dsub = s.add_subparsers(dest="dead_command", required=True)
    d = dsub.add_parser("list", parents=[common], help="dead jobs, and dead letters that belong to none")
    d.add_argument("--limit", type=int, default=100)
    d.set_defaults(func=cmd_dead_list)
    d = dsub.add_parser("retry", parents=[common], help="give dead jobs another round of attempts")
    d.add_argument("job_ids", type=int, nargs="*")
    d.add_argument("--all", action="store_true", help="every dead job")
    d.set_defaults(func=cmd_dead_retry)
