"""The ``km`` daemon entry: ``python -m enstratus_workers.daemons.km start|stop|status|run``.

``build`` turns the validated settings into a ``KMService`` without opening anything (the
runner daemonizes afterwards, and sockets or database connections must not cross that fork):
it reads ``services/km/classes/km.cfg`` and the ENCRYPTION_KEY the workers use, plus the old
key while a rotation is under way. The runner does pid file, logging, signals and the verbs.
"""

from __future__ import annotations

import sys

from enstratus_workers.km.config import load_km_settings, read_encryption_key
from enstratus_workers.km.envelope import Keyring
from enstratus_workers.km.server import KMService


def build(settings, layout, name, options) -> KMService:
    km = load_km_settings(layout)
    prov = settings.provisioning if settings is not None else None
    if (prov is not None and prov.encryption_key and prov.source is not None
            and prov.source.resolve() == km.provisioning_cfg.resolve()):
        key = prov.encryption_key           # already read and validated by the config loader
    else:
        key = read_encryption_key(km.provisioning_cfg)
    keys = [key.reveal()]
    if km.old_encryption_key:
        keys.append(km.old_encryption_key.reveal())
    return KMService(km, Keyring(*keys), name=name)


def main(argv=None) -> int:
    from enstratus_workers.runtime import (
        runner,  # the runner pulls in python-daemon; only here
    )

    return runner.main("km", build, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
