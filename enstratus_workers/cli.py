"""``enstratus-workers``: the operator's command line. Parse, validate, call; nothing more here.

Exit codes: 0 success, 1 the thing asked about failed (a job failed, a check found a problem,
a job to cancel was unknown or finished), 2 bad usage or input, 6 bad configuration (as the
daemons), 124 ``--wait`` timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from enstratus_workers.runtime.logs import escape

from .errors import EXIT_NOT_CONFIGURED, ConfigError, EnstratusError
from .jobs import lifecycle
from .layout import Layout

EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 124


def _layout(args) -> Layout:
    return Layout(Path(args.home).resolve()) if args.home else Layout.from_env()


def _settings(args):
    from .config import load_settings

    return load_settings(_layout(args))


def _dbs(args, settings):
    from .db import open_databases

    return open_databases(settings.worker, _layout(args))


def _print(args, data, text: str) -> None:
    """JSON (escapes of its own), or the text with the control characters of every line escaped:
    names and errors come from users, and must neither forge a line nor drive the terminal."""
    print(json.dumps(data, indent=2, default=str) if args.json else
          "\n".join(escape(line) for line in text.split("\n")))


def _error(message) -> None:
    print(f"enstratus-workers: {escape(str(message))}", file=sys.stderr)


def _ts(ms) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _job_text(job) -> str:
    lines = [f"job {job.job_id}: {job.action} on {job.queue} — {job.status}",
             f"  account:   {job.account if job.account is not None else '-'}",
             f"  arguments: {job.arguments}",
             f"  attempts:  {job.attempts}/{job.max_attempts}",
             f"  created:   {_ts(job.created_timestamp)}",
             f"  started:   {_ts(job.start_timestamp)}",
             f"  ended:     {_ts(job.end_timestamp)}"]
    if job.start_timestamp and job.end_timestamp:
        lines.append(f"  duration:  {job.end_timestamp - job.start_timestamp} ms")
    if job.worker:
        lines.append(f"  worker:    {job.worker}")
    if job.result is not None:
        lines.append(f"  result:    {job.result}")
    if job.error:
        lines.append(f"  error:     {job.error}")
    if job.idempotency_key:
        lines.append(f"  key:       {job.idempotency_key}")
    if job.cancel_requested_ms:
        lines.append(f"  cancel:    requested {_ts(job.cancel_requested_ms)}")
    if job.deferrals:
        held = f", held until {_ts(job.not_before_ms)}" if job.not_before_ms and job.status == "pending" else ""
        lines.append(f"  deferred:  {job.deferrals} time(s){held}")
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------------
def cmd_submit(args) -> int:
    from enstratus_workers.jobs.submit import SubmitError, outcome_bell, submit, wait_for

    settings = _settings(args)
    dbs = _dbs(args, settings)
    # a wait's bell is announced before the submit: the job's outcome rings it, whenever it
    # comes, and the wait need not read the row while the job is on its way (jobs/submit.py)
    bell = outcome_bell(_layout(args).run_dir) if args.wait else None
    try:
        try:
            from .actions import default_registry
            job, created = submit(settings, dbs, args.action, args.args, args.queue,
                                  idempotency_key=args.idempotency_key, max_attempts=args.max_attempts,
                                  account=args.account, registry=default_registry())
        except SubmitError as exc:
            _error(exc)
            return EXIT_USAGE
        if not args.wait:
            note = "" if created else " (already submitted with this idempotency key)"
            _print(args, {**job.as_dict(), "created": created}, f"submitted job {job.job_id}{note}")
            return 0
        if not created and bell is not None:   # submitted before, maybe long done: no ring
            bell.close()                          # will come, so the wait reads the row first
            bell = None
        waiting, bell = bell, None                # wait_for closes it
        job = wait_for(dbs, job.job_id, args.timeout, run_dir=_layout(args).run_dir, bell=waiting)
        _print(args, job.as_dict(), _job_text(job))
        if job.status == lifecycle.SUCCEEDED:
            return 0
        return EXIT_TIMEOUT if job.status in lifecycle.ACTIVE else EXIT_FAILED
    finally:
        if bell is not None:
            bell.close()
        dbs.close()


def cmd_job(args) -> int:
    settings = _settings(args)
    dbs = _dbs(args, settings)
    try:
        job = dbs.jobs.get(args.job_id)
        if job is None:
            _error(f"no job {args.job_id}")
            return EXIT_FAILED
        data = job.as_dict()
        data["events"] = [e.__dict__ for e in dbs.events.for_job(job.job_id)]
        _print(args, data, _job_text(job))
        return 0
    finally:
        dbs.close()


_CANCELLED = {
    lifecycle.CANCEL_NOW: "cancelled (it was {was})",
    lifecycle.CANCEL_ASK: "stopping: its action is told to stop; it ends cancelled once its compensation ran",
    lifecycle.CANCEL_FINISHED: "not cancelled: it had already finished ({status})",
    "unknown": "not cancelled: no such job",
}


def cmd_cancel(args) -> int:
    """Each job on its line; exit 0 if every one was cancelled or asked to stop, else 1."""
    from enstratus_workers.jobs.submit import cancel

    from .db.audit import record_cli

    settings = _settings(args)
    dbs = _dbs(args, settings)
    ok = (lifecycle.CANCEL_NOW, lifecycle.CANCEL_ASK)
    said = lambda a: _CANCELLED[a.verdict].format(status=getattr(a.job, "status", ""), was=a.was)  # noqa: E731
    try:
        answers = [(job_id, cancel(dbs, job_id)) for job_id in args.job_ids]
        for job_id, a in answers:   # each in the audit log, as the API's are
            record_cli(dbs.provisioning, settings.worker.host_name, "job.cancel", f"job {job_id}",
                       0 if a.verdict in ok else EXIT_FAILED,
                       before={"status": a.was} if a.was else None,
                       after={"status": a.job.status} if a.job else None,
                       detail=None if a.verdict in ok else said(a))
    finally:
        dbs.close()
    _print(args, [{"job_id": job_id, "verdict": a.verdict, "was": a.was, "job": a.job.as_dict() if a.job else None}
                  for job_id, a in answers], "\n".join(f"job {job_id}: {said(a)}" for job_id, a in answers))
    return 0 if all(a.verdict in ok for _, a in answers) else EXIT_FAILED


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}")
    return value


def cmd_jobs(args) -> int:
    settings = _settings(args)
    dbs = _dbs(args, settings)
    try:
        jobs = dbs.jobs.list(status=args.status, limit=args.limit)
        rows = [f"{'ID':>8}  {'STATUS':<10} {'ACTION':<20} {'QUEUE':<12} {'ACCOUNT':<12} {'ATT':>3}  "
                f"{'ENDED':<24} ERROR"]
        for j in jobs:
            rows.append(f"{j.job_id:>8}  {j.status:<10} {j.action[:20]:<20} {j.queue[:12]:<12} "
                        f"{(j.account or '-')[:12]:<12} {j.attempts:>3}  {_ts(j.end_timestamp):<24} "
                        f"{(j.error or '')[:60]}")
        _print(args, [j.as_dict() for j in jobs], "\n".join(rows))
        return 0
    finally:
        dbs.close()


def cmd_status(args) -> int:
    """This install's daemons (pid files), the fleet's hosts (heartbeats), health and job counts."""
    from .status_report import status_report

    data, text, healthy = status_report(_settings(args), _layout(args))
    _print(args, data, text)
    return 0 if healthy else EXIT_FAILED


def cmd_monitor(args) -> int:
    from .monitor.tui import fetch_once, run_monitor

    if args.json:   # one look at the figures the screen shows, for scripts
        snap = fetch_once(_settings(args), _layout(args))
        print(json.dumps(snap.as_dict(), indent=2, default=str))
        return EXIT_FAILED if snap.errors else 0
    return run_monitor(_settings(args), _layout(args), refresh=args.refresh)


def cmd_config_check(args) -> int:
    """Every file any daemon reads, with that daemon's reader: all problems, then exit 6."""
    from .config import check_config, describe, load_settings

    layout = _layout(args)
    problems = check_config(layout)
    if problems:
        if args.json:
            print(json.dumps({"ok": False, "problems": [
                {"file": str(p.file) if p.file is not None else None, "key": p.key, "line": p.line,
                 "reason": p.reason} for p in problems]}, indent=2))
        for p in problems:
            _error(f"configuration error: {p}")
        return EXIT_NOT_CONFIGURED
    _print(args, {"ok": True, "settings": describe(load_settings(layout))},
           f"configuration OK ({layout.classes_dir}, {layout.km_dir / 'classes'})")
    return 0


def cmd_keygen(args) -> int:
    from .config.keys import ensure_provisioning_file, write_new_key

    layout = _layout(args)
    path = layout.classes_dir / "enstratus-provisioning.cfg"
    if ensure_provisioning_file(layout):
        print(f"wrote {path} with a new ENCRYPTION_KEY (mode 0600)")
    elif args.force:
        write_new_key(path)
        print(f"replaced ENCRYPTION_KEY in {path} (mode 0600); restart the service and the KM")
    else:
        print(f"{path} already has a key; use --force to replace it", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_tls(args) -> int:
    """``tls init`` / ``tls issue``: the certificates of the KM link (logic in ``km.certs``)."""
    from .km import certs
    from .layout import short_hostname

    layout = _layout(args)
    directory = Path(args.dir).resolve() if args.dir else layout.km_dir / "tls"
    hosts = args.hosts.split(",") if args.hosts else [short_hostname()]
    try:
        if args.tls_command == "init":
            names = args.server_names.split(",") if args.server_names else certs.default_server_names()
            written = certs.init(directory, hosts, names, days=args.days, force=args.force)
        else:
            written = certs.issue_clients(directory, hosts, days=args.days, force=args.force)
    except certs.CertError as exc:
        _error(exc)
        return EXIT_USAGE if isinstance(exc, certs.BadHostName) else EXIT_FAILED
    print("\n".join(f"wrote {p} (mode {p.stat().st_mode & 0o777:04o})" for p in written.files))
    print(certs.settings_hint(layout.home, directory, certs.check_names(hosts, "host")))
    return 0


def _db_targets(args):
    from .db.targets import configured

    return [t for t in configured(_layout(args)) if args.chain in (None, t.chain)]


def cmd_db_upgrade(args) -> int:
    """Every chain to head under the schema lock; with --sql only print the SQL it would run."""
    from .db import migrate
    from .db.targets import open_engine

    layout, lines, data = _layout(args), [], []
    for target in _db_targets(args):
        engine = open_engine(target, layout, create=not args.sql)
        try:
            if args.sql:
                print(f"-- {target.chain} database ({target.source}: {target.where})")
                migrate.upgrade_sql(engine, target.chain, sys.stdout)
                continue
            state = migrate.upgrade(engine, target.chain)
        finally:
            engine.dispose()
        lines.append(f"{state.describe()}  [{target.source}: {target.where}]")
        data.append({"chain": target.chain, "source": target.source, "revision": state.current})
    if not args.sql:
        _print(args, data, "\n".join(lines))
    return 0


def cmd_db_current(args) -> int:
    from .db import migrate
    from .db.targets import open_engine

    layout, lines, data, behind = _layout(args), [], [], False
    for target in _db_targets(args):
        engine = open_engine(target, layout, create=False)
        try:
            state = migrate.current(engine, target.chain)
        finally:
            engine.dispose()
        behind = behind or not state.at_head
        lines.append(f"{state.describe()}  [{target.source}: {target.where}]")
        data.append({"chain": target.chain, "source": target.source, "revision": state.current,
                     "head": state.head, "hand_version": state.legacy})
    _print(args, data, "\n".join(lines))
    return EXIT_FAILED if behind else 0


def cmd_db_history(args) -> int:
    from .db import migrate

    chains = [args.chain] if args.chain else list(migrate.CHAINS)
    data = {c: [{"revision": r, "down_revision": d, "message": m} for r, d, m in migrate.history(c)]
            for c in chains}
    _print(args, data, "\n".join(f"{c}: {r['down_revision'] or '<base>'} -> {r['revision']}  "
                                 f"{r['message'].splitlines()[0] if r['message'] else ''}"
                                 for c, revs in data.items() for r in revs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="enstratus-workers", description=__doc__.splitlines()[0])
    p.add_argument("--home", help="install root (default: $ENSTRATUS_HOME or the checkout)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", parents=[common], help="submit a job")
    s.add_argument("action")
    s.add_argument("--args", help="the job's arguments, a JSON object")
    s.add_argument("--queue", help="queue (default: worker.default_queue)")
    s.add_argument("--idempotency-key", help="a second submit with the same key returns the first job")
    s.add_argument("--max-attempts", type=int, help="override action.max_attempts")
    s.add_argument("--account", help="the account the job is for (default: its arguments' 'account', if any)")
    s.add_argument("--wait", action="store_true", help="wait for the outcome; exit 1 if it failed")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (exit 124 after)")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("job", parents=[common], help="show one job")
    s.add_argument("job_id", type=int)
    s.set_defaults(func=cmd_job)

    s = sub.add_parser("cancel", parents=[common], help="cancel jobs (exit 1 if one was unknown or finished)")
    s.add_argument("job_ids", metavar="JOB", type=_job_id, nargs="+")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("jobs", parents=[common], help="list recent jobs")
    s.add_argument("--status", choices=lifecycle.STATUSES)
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("status", parents=[common], help="daemons, the fleet's hosts, health, job counts")
    s.set_defaults(func=cmd_status)

    from .cli_dead import add_parsers as add_dead_parsers
    from .cli_pauses import add_parsers as add_pause_parsers

    add_dead_parsers(sub, common)
    add_pause_parsers(sub, common)

    s = sub.add_parser("monitor", parents=[common],
                       help="live terminal view of hosts, clusters and workers (q quits); --json: one look")
    s.add_argument("--refresh", type=float, default=1.0, help="seconds between updates")
    s.set_defaults(func=cmd_monitor)

    s = sub.add_parser("config", help="configuration commands")
    csub = s.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", parents=[common], help="validate every config file, as the daemons do")
    c.set_defaults(func=cmd_config_check)

    from .db.migrate import CHAINS

    s = sub.add_parser("db", help="database schemas: migrations (Alembic)")
    bsub = s.add_subparsers(dest="db_command", required=True)
    b = bsub.add_parser("upgrade", parents=[common], help="migrate every database to this release's schema")
    b.add_argument("--sql", action="store_true", help="print the SQL instead of running it (changes nothing)")
    b.add_argument("--chain", choices=CHAINS, help="only this database's chain")
    b.set_defaults(func=cmd_db_upgrade)
    b = bsub.add_parser("current", parents=[common], help="each database's revision (exit 1 if one is behind)")
    b.add_argument("--chain", choices=CHAINS, help="only this database's chain")
    b.set_defaults(func=cmd_db_current)
    b = bsub.add_parser("history", parents=[common], help="the revisions of each chain, oldest first")
    b.add_argument("--chain", choices=CHAINS, help="only this chain")
    b.set_defaults(func=cmd_db_history)

    s = sub.add_parser("keygen", help="write a new ENCRYPTION_KEY (mode 0600)")
    s.add_argument("--force", action="store_true", help="replace an existing key")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("tls", help="certificates for TLS to the KM (ssl = true)")
    tsub = s.add_subparsers(dest="tls_command", required=True)
    for verb, what in (("init", "a new CA, the KM's certificate and one per worker host"),
                       ("issue", "certificates for more worker hosts, from the existing CA")):
        t = tsub.add_parser(verb, help=what)
        t.add_argument("--dir", help="where to write them (default: services/km/tls of the install)")
        t.add_argument("--hosts", help="worker host names, comma-separated (default: this host's)")
        if verb == "init":
            t.add_argument("--server-names", help="names (or IPs) clients reach the KM by, comma-separated "
                                                  "(default: this host's names, localhost, 127.0.0.1, ::1)")
        t.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
        t.add_argument("--force", action="store_true", help="replace existing keys")
        t.set_defaults(func=cmd_tls)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        _error(f"configuration error: {exc}")
        return EXIT_NOT_CONFIGURED
    except EnstratusError as exc:
        _error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``status | head``): nothing more to say, and nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
