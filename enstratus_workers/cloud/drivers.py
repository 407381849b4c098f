"""A libcloud driver for an account: provider and credentials from the KM, nothing from the job.

Libcloud's own errors are left to propagate (a provider's HTTP 500 is worth a retry), except the
permanent ones an operator must fix, which become ``ActionError`` with the reason. Where the
action's context has the worker's ``CloudLimiter`` (``ctx.cloud_limits``), the driver comes
wrapped in it: every call waits for its turn of the (provider, account) budget (``limiter.py``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from libcloud.common.types import InvalidCredsError
from libcloud.compute.base import NodeDriver
from libcloud.compute.providers import get_driver

from enstratus_workers.cloud.credentials import credentials_for
from enstratus_workers.cloud.local_driver import PROVIDER as LOCAL, register_local_driver
from enstratus_workers.errors import ActionError
from enstratus_workers.layout import Layout

#: credential metadata passed on to every driver's constructor when present
DRIVER_OPTIONS = ("region", "host", "port", "api_version")
#: the local cloud's knobs in the credential's metadata -> its driver's options (local_driver.py)
LOCAL_OPTIONS = {"rate_limit": "ex_rate_limit", "rate_burst": "ex_rate_burst"}


@contextlib.contextmanager
def refused_as_action_error(provider: str, account: str):
    """A refusal of the credentials is permanent: report it, without any credential in it."""
    try:
        yield
    except InvalidCredsError:
        raise ActionError(f"the {provider} cloud refused the credentials of account {account}") from None


def local_state_dir(context, extra: dict) -> Path:
    """The local cloud's state directory: the credential's ``state_dir`` (relative to the install
    root) or ``services/worker/data/local-cloud``."""
    home = getattr(getattr(context, "settings", None), "home", None)
    given = extra.get("state_dir")
    if given:
        path = Path(str(given))
        if path.is_absolute():
            return path
        if home is None:
            raise ActionError("a relative state_dir needs the settings' install root")
        return Path(home) / path
    if home is None:
        raise ActionError("the local cloud needs a state directory: no settings and no state_dir")
    return Layout(Path(home)).data_dir / "local-cloud"


def open_driver(context, account: str, patient: bool = False) -> tuple[NodeDriver, str]:
    """``(driver, provider)`` for ``account``; ``ActionError`` for an unknown provider or refused keys.

    ``patient``: for a compensation, whose calls wait for their turn however long instead of
    deferring the job, and are not stopped by the cancel they answer (``limiter.py``)."""
    provider, key, secret, extra = credentials_for(context, account)
    register_local_driver()
    try:
        driver_class = get_driver(provider)
    except (AttributeError, ImportError):
        raise ActionError(f"unknown cloud provider {provider!r} for account {account}") from None
    options = {k: extra[k] for k in DRIVER_OPTIONS if extra.get(k) is not None}
    if provider == LOCAL:
        options["ex_state_dir"] = local_state_dir(context, extra)
        options.update({option: extra[k] for k, option in LOCAL_OPTIONS.items() if extra.get(k) is not None})
    with refused_as_action_error(provider, account):
        try:
            driver = driver_class(key, secret, **options)
        except ValueError as exc:   # a knob of the credential the driver refuses
            raise ActionError(f"the {provider} cloud credentials of account {account}: {exc}") from None
    limiter = getattr(context, "cloud_limits", None)
    if limiter is not None:
        driver = limiter.limit(driver, provider, account, context, patient=patient)
    return driver, provider
