"""Run a command that daemonizes itself, and stay its reaper: ``python reaper.py CMD ARGS...``.

``rabbitmq-server -detached`` forks its node away from the shell that started it, so the node's
``beam.smp`` (and its ``erl_child_setup`` and ``inet_gethost``) would be re-parented to PID 1 and,
where PID 1 does not reap (as in this machine's VM), stay behind as zombies once killed. This
process makes itself the "child subreaper" of what it starts (``prctl(PR_SET_CHILD_SUBREAPER)``):
every orphan among those descendants becomes its child, and it reaps them until none is left,
then exits with the command's exit code. (``rabbitmqctl`` runs under it too: the CLI's Erlang
leaves an ``inet_gethost`` orphan behind.) It takes its parent with it: when the test process dies (``PR_SET_PDEATHSIG``), it
kills its children, so a crashed test run leaves no node behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _children() -> list[int]:
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == me:
                out.append(int(entry.name))
    return out


def _kill_children(_signum, _frame) -> None:
    for pid in _children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 or libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        print(f"reaper: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _kill_children)
    first = os.fork()
    if first == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    status = 0
    while True:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            return status if status >= 0 else 128 - status
        if pid == first:
            status = os.waitstatus_to_exitcode(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
