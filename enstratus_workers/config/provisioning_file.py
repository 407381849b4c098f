"""``enstratus-provisioning.cfg``: the AES-256 key for KM traffic and the workers' source CIDRs.

Unlike the other files it has no defaults: a key made up at load time would differ between the
processes, so the file must exist (``keys.ensure_provisioning_file`` creates it on first start).
"""

from __future__ import annotations

from pathlib import Path

from enstratus_workers.config.cfgfile import CfgKey, read_cfg
from enstratus_workers.config.settings import ProvisioningSettings, Secret
from enstratus_workers.errors import ConfigError

FILENAME = "enstratus-provisioning.cfg"
TEMPLATE = FILENAME + ".in"
KEY = "ENCRYPTION_KEY"
_GENERATE = "run `enstratus-workers keygen` (or start the service once) to generate it"

KEYS = (
    CfgKey(KEY, "key32()", required=True, missing=f"is missing: {_GENERATE}"),
    CfgKey("SOURCE_CIDR", "cidr_list()"),
)


def read_provisioning(path: Path) -> ProvisioningSettings:
    """The settings in ``path``, which must exist; ConfigError(s) if it is missing, exposed or bad."""
    entries = read_cfg(path, KEYS, secret=KEY)
    if entries is None:
        raise ConfigError(f"is missing: {_GENERATE}", file=path)
    values = {"encryption_key": Secret(entries[KEY].value)}
    if "SOURCE_CIDR" in entries:
        values["source_cidrs"] = entries["SOURCE_CIDR"].value
    return ProvisioningSettings(**values, source=path)
