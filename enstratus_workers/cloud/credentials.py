"""The one place where a KM credential becomes a provider name, a key and a secret.

Credentials come from the KM (``context.km``), never from job arguments, and never go into
results or logs. An account's cloud credential is the KM credential named ``cloud``: its secret
is the provider secret, its (clear) metadata names the provider and holds the non-secret parts::

    {"provider": "local", "key": "AKIA...", "region": "eu-west-1", "state_dir": "..."}

A provider that takes one token and no secret (the token is libcloud's "key") stores the
token as the secret and no ``key``. Adjust this module, and only this one, if the KM's shape
changes.
"""

from __future__ import annotations

from typing import Any

from enstratus_workers.errors import ActionError

#: the KM credential name of an account's cloud credentials
CLOUD_CREDENTIAL = "cloud"


def _reveal(secret: Any) -> str:
    value = secret.reveal() if hasattr(secret, "reveal") else secret
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ActionError("the cloud credential's secret is not UTF-8 text") from None
    if isinstance(value, str):
        return value
    raise ActionError("the cloud credential's secret has an unexpected type")


def credentials_for(context, account: str, name: str = CLOUD_CREDENTIAL) -> tuple[str, str, str | None, dict]:
    """``(provider, key, secret, extra)`` for ``account``; ``extra`` is the rest of the metadata.

    Raises ``ActionError`` when there is no KM, no such credential, or no provider named.
    KM outages (``KMUnavailable``) propagate: the job fails this attempt and is retried.
    """
    if getattr(context, "km", None) is None:
        raise ActionError("no KM client is configured: cloud credentials are unavailable")
    try:
        credential = context.km.get(account, name)
    except Exception as exc:
        # KMNotFound carries code "not_found"; matched by code so this module needs no KM import
        if getattr(exc, "code", None) != "not_found":
            raise
        raise ActionError(f"account {account} has no cloud credentials (KM credential {name!r})") from None
    metadata = dict(getattr(credential, "metadata", None) or {})
    provider = metadata.pop("provider", None)
    if not isinstance(provider, str) or not provider.strip():
        raise ActionError(f"the cloud credentials of account {account} name no provider")
    secret = _reveal(credential.secret)
    key = metadata.pop("key", None)
    if key is None:
        key, secret = secret, None
    if not isinstance(key, str) or not key:
        raise ActionError(f"the cloud credentials of account {account} hold no key")
    return provider.strip().lower(), key, secret, metadata
