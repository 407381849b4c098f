"""The key-management (KM) service and its client: cloud credentials, kept apart from the workers.

Workers never hold credentials at rest; they ask the KM daemon (``services/km``) for them over
TCP (``enstratus_workers.km.client.KMClient``). Every frame is sealed with AES-256-GCM under the
``ENCRYPTION_KEY`` of ``enstratus-provisioning.cfg`` (``envelope.py``); with ``ssl = true`` the
frames travel inside TLS 1.3 with client certificates (``tls.py``, forward secrecy) and the KM
grants each client only the accounts its access list names (``access.py``). The daemon keeps each
secret encrypted under its own master key in the ``credentials`` database (``store.py``).

The exception tree lives here, in the package both sides import, so a caller can catch
``KMError`` without importing the client's socket code. Modules: ``envelope`` (message crypto),
``protocol`` (framing and the request/response schema), ``store`` (credentials at rest),
``server`` (the daemon's ``KMService``), ``client`` (``KMClient``), ``config`` (``km.cfg``),
``tls`` (contexts and their failures), ``access`` (``km-access.cfg``), ``certs`` (``tls init``).
"""

from __future__ import annotations

from enstratus_workers.errors import EnstratusError


class KMError(EnstratusError):
    """Base of every KM failure, on the client and on the server.

    ``code`` is the machine-readable reason. Messages never carry a secret: at most an
    account, a credential name, a key id and a code.
    """

    code = "km_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class KMUnavailable(KMError):
    """The KM could not be reached or answered nothing usable (connection refused, timeout,
    connection closed mid-answer), or its database is down. Retrying later may succeed."""

    code = "unavailable"


class KMRefused(KMError):
    """The KM understood the client and said no, or the client refused the KM's answer.

    Retrying the same thing fails the same way, so the client never retries it. Codes:
    ``unknown_key`` (the KM does not hold this client's ENCRYPTION_KEY), ``unauthentic``
    (tampered frame or wrong key), ``stale`` (clock skew beyond the replay window),
    ``replayed``, ``restarted`` (sealed before the KM started), ``bad_frame``, ``frame_too_large``,
    ``bad_request``, ``busy``, ``internal``, ``tls`` (a TLS handshake either end refused: certificate,
    CA, version), ``tls_required`` (a plaintext client at a TLS KM); ``conflict`` is ``KMConflict``,
    ``forbidden`` is ``KMForbidden``.
    """

    code = "refused"


class KMConflict(KMRefused):
    """A put that would create another spelling (case, accents, trailing spaces) of an existing
    account or credential. The message names the existing spelling; use it instead."""

    code = "conflict"


class KMForbidden(KMRefused):
    """The KM's access list does not grant this client (its certificate's name) the account.

    ``account`` and ``client`` say which; the message names both and the file to change.
    """

    code = "forbidden"

    def __init__(self, message: str, account: str = "", client: str = ""):
        super().__init__(message)
        self.account = account
        self.client = client


class KMNotFound(KMError):
    """The account has no credential of that name. Not a refusal: the caller usually handles it."""

    code = "not_found"
