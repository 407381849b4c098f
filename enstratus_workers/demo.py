"""``make run``: start the service on its embedded default, submit a demo job, show its outcome,
and say where the status pages are and how to log in to them.

Everything it does is what an operator would do by hand: generate the provisioning key on first
use, check the configuration, ``etc/init.d/enstratus-km start``, ``etc/init.d/enstratus-workers
start``, ``enstratus-workers submit``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from enstratus_workers.jobs.submit import submit, wait_for

from .admin.config import load_admin_settings
from .config import ensure_provisioning_file, load_settings
from .db import open_databases
from .errors import EXIT_NOT_CONFIGURED, ConfigError
from .layout import Layout


def main() -> int:
    layout = Layout.from_env()
    if ensure_provisioning_file(layout):
        print(f"generated {layout.classes_dir / 'enstratus-provisioning.cfg'} (new ENCRYPTION_KEY, mode 0600)")
    try:
        settings = load_settings(layout)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_NOT_CONFIGURED
    # The KM first: workers ask it for credentials.
    for script in ("enstratus-km", "enstratus-workers"):
        init = layout.home / "etc" / "init.d" / script
        print(f"$ {init.relative_to(layout.home)} start")
        started = subprocess.run([str(init), "start"], cwd=layout.home)
        if started.returncode != 0:
            print(f"{script} did not start (exit {started.returncode}); see the logs under services/",
                  file=sys.stderr)
            return started.returncode
    dbs = open_databases(settings.worker, layout)
    try:
        job, _ = submit(settings, dbs, "echo", json.dumps({"hello": "enstratus"}))
        print("$ enstratus-workers submit echo --args '{\"hello\": \"enstratus\"}' --wait")
        job = wait_for(dbs, job.job_id, timeout=60, run_dir=layout.run_dir)
        _show(job)
        # A server on the "local" cloud: a real guest-agent process on 127.0.0.1, launched through
        # Libcloud with the account's credential from the KM (never from the job's arguments).
        _ensure_demo_credential(settings)
        print("$ enstratus-workers submit server.launch --args '{\"account\": \"demo\", \"image\": "
              "\"local-agent\", \"size\": \"small\", \"name\": \"web\"}' --wait")
        launch, _ = submit(settings, dbs, "server.launch", json.dumps(
            {"account": "demo", "image": "local-agent", "size": "small", "name": "web"}))
        launch = wait_for(dbs, launch.job_id, timeout=60, run_dir=layout.run_dir)
        _show(launch)
    finally:
        dbs.close()
    job = launch if job.status == "succeeded" else job
    server_id = (launch.as_dict().get("result") or {}).get("server_id", "...")
    print(f"""
The service is running ({settings.mq.transport} queue, databases under {layout.data_dir.relative_to(layout.home)}).
  .venv/bin/enstratus-workers status             daemons, health, job counts
  .venv/bin/enstratus-workers submit sleep --args '{{"seconds": 2}}' --wait
  .venv/bin/enstratus-workers jobs               recent jobs
  .venv/bin/enstratus-workers submit server.terminate --args '{{"server_id": "{server_id}"}}' --wait
                                                 the demo server is a guest-agent process that,
                                                 like a VM, outlives the service: terminate it
  services/worker/bin/pinger check               monitoring-plugin health line
  logs: {layout.log_dir.relative_to(layout.home)}/
To stop it:  etc/init.d/enstratus-workers stop; etc/init.d/enstratus-km stop   (or: make stop)
{pages_hint(layout)}""")
    return 0 if job.status == "succeeded" else 1


def pages_hint(layout: Layout) -> str:
    """Where the status page is (the address the admin daemon wrote when it began to serve) and
    how to log in: the token's place, never the token itself (it would stay in the scrollback)."""
    admin = load_admin_settings(layout)
    served = sorted(layout.run_dir.glob("admin@*.url"))
    if served:
        url = served[0].read_text().strip().rstrip("/") + "/ui/status"
    elif admin.port:   # started --without-http, or it could not start: the address it would serve
        url = f"http://{admin.host}:{admin.port}/ui/status (the admin daemon is not running)"
    else:
        url = (f"none: the admin daemon is not running (with port 0 it writes the address it takes "
               f"to {_shown(layout, layout.run_dir)}/admin@<name>.url)")
    if admin.token:
        where = f"the token set in {_shown(layout, admin.source)}"
    else:
        where = f"the token in {_shown(layout, admin.token_file)}:  cat {_shown(layout, admin.token_file)}"
    return f"Status page: {url}\n  log in with {where}"


def _shown(layout: Layout, path) -> str:
    try:
        return str(path.relative_to(layout.home))
    except ValueError:
        return str(path)


def _show(job) -> None:
    print(f"job {job.job_id} ({job.action}): {job.status}"
          + (f" in {job.end_timestamp - job.start_timestamp} ms on {job.worker}" if job.end_timestamp else "")
          + (f", result {job.result}" if job.result else "") + (f", error {job.error}" if job.error else ""))


def _ensure_demo_credential(settings) -> None:
    """The demo account's cloud credential, created once (the local cloud remembers its owner)."""
    import secrets

    from .km import KMNotFound
    from .km.client import KMClient

    with KMClient(settings.km_client, settings.provisioning.encryption_key) as km:
        try:
            km.get("demo", "cloud")
        except KMNotFound:
            km.put("demo", "cloud", secrets.token_urlsafe(24), kind="api_key",
                   metadata={"provider": "local", "key": "demo"})


if __name__ == "__main__":
    raise SystemExit(main())
