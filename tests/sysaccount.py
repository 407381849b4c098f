"""A scratch system account for tests of the privilege drop: created with useradd, removed after.

Creating an account needs root and the shadow tools; a test that cannot have one skips with the
reason (fails under CI=true, where the suite runs as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from enstratus_workers.runtime.privileges import Account
from tests.conftest import unavailable


@contextmanager
def scratch_account() -> Iterator[Account]:
    """A new system account ``ewtest_<random>`` (and its group), no home, no login shell."""
    if os.geteuid() != 0:
        unavailable("creating a scratch system account needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        unavailable("useradd/userdel are not installed")
    name = f"ewtest_{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, text=True)
    try:
        pw = pwd.getpwnam(name)
        yield Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    finally:
        # userdel also removes the group useradd made for it (USERGROUPS_ENAB)
        subprocess.run(["userdel", name], check=False, capture_output=True, text=True)
