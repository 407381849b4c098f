"""TLS for the KM link (``ssl = true``): the contexts both ends use, and what their failures mean.

TLS 1.3 only: its key exchange is always ephemeral (ECDHE), so a recorded session stays sealed
even from someone who later learns a certificate key or the ``ENCRYPTION_KEY`` (forward secrecy,
which the sealed frames alone cannot give: they are sealed under the long-term key). Both ends
verify each other against one CA (``enstratus-workers tls init`` makes it): the client checks the
KM's certificate and its name, the KM requires a client certificate (``CERT_REQUIRED``) whose
names (subjectAltName DNS, and the CN) say which worker host it is, for the access list
(``access.py``). The sealed frames still travel inside TLS, so the replay guard and the key
rotation work as before.

Files are checked the way a config value is (``tls_file_problems``), so a missing certificate or
a key others can read stops ``config check`` and the daemons' start with exit 6 naming the key,
not the first connect of a running worker.
"""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from enstratus_workers.errors import ConfigError

#: a TLS record starts with this byte (handshake); a plaintext KM frame with a 0x00 length byte
HANDSHAKE_RECORD = 0x16
_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True)
class TLSFiles:
    """The three files one end of the link needs; resolved paths."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def tls_file_problems(files: dict[str, Path | None], source: Path | None,
                      line=lambda key: None) -> list[ConfigError]:
    """What is wrong with ``{"ca_file": path, "cert_file": path, "key_file": path}``: each
    problem a ConfigError naming its key. A missing key, a missing or non-regular file, a
    ``key_file`` that group or others may read (it must be 0600 or stricter, as ssh wants), and
    files OpenSSL cannot load (or a certificate that is not the key's) are refused."""
    errors = []
    for key, path in files.items():
        if path is None:
            errors.append(ConfigError("is required when ssl = true", file=source, key=key, line=line("ssl")))
            continue
        try:
            info = os.stat(path)
        except OSError as exc:
            errors.append(ConfigError(f"cannot read {path}: {exc.strerror}", file=source, key=key, line=line(key)))
            continue
        if not stat.S_ISREG(info.st_mode):
            errors.append(ConfigError(f"{path} is not a regular file", file=source, key=key, line=line(key)))
        elif key == "key_file" and info.st_mode & 0o077:
            errors.append(ConfigError(
                f"{path} is a private key but has mode {stat.S_IMODE(info.st_mode):04o}; "
                f"restrict it with: chmod 600 {path}", file=source, key=key, line=line(key)))
    if errors:
        return errors
    tls = TLSFiles(files["ca_file"], files["cert_file"], files["key_file"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError):
        return [ConfigError(f"{tls.ca_file} holds no PEM certificate", file=source, key="ca_file",
                            line=line("ca_file"))]
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (ssl.SSLError, OSError) as exc:
        # OpenSSL's reason names the file part that failed, never key material
        return [ConfigError(f"{tls.cert_file} and {tls.key_file} do not load as a certificate and "
                            f"its private key ({getattr(exc, 'reason', None) or exc})",
                            file=source, key="cert_file", line=line("cert_file"))]
    return []


def _context(purpose: int, files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(files.ca_file))
    ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
    return ctx


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The KM's context: TLS 1.3, its certificate, and a client certificate from the CA required."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, files)
    # Every call is one short connection and the client does not resume sessions; tickets would
    # only cost bytes, and their key is one more long-term secret that could unseal sessions.
    ctx.num_tickets = 0
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """A worker's context: TLS 1.3, the KM's certificate and name verified, this host's certificate."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, files)
    ctx.check_hostname = True
    return ctx


def peer_names(sock: ssl.SSLSocket) -> tuple[str, ...]:
    """The names the verified peer certificate gives its holder: subjectAltName DNS entries, then
    the CN. Empty if there is none (the context guarantees the certificate itself was verified)."""
    cert = sock.getpeercert() or {}
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    for rdn in cert.get("subject", ()):
        names.extend(value for attr, value in rdn if attr == "commonName")
    return tuple(dict.fromkeys(names))


def is_tls_refusal(exc: BaseException) -> bool:
    """True for a TLS failure that a retry would meet again: an untrusted certificate, an alert
    from the peer (certificate required or unknown, protocol version), a peer that does not speak
    TLS. False for a connection that merely closed, which is worth a retry."""
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, _CLOSED)


def describe_refusal(exc: ssl.SSLError) -> str:
    """What an operator should read for ``exc``: OpenSSL's reason, and what usually causes it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the KM's certificate does not verify ({exc.verify_message}); is it signed by "
                f"ca_file, and does it name the host the client connects to (server_name)?")
    reason = (exc.reason or str(exc)).upper()
    hints = {
        "WRONG_VERSION_NUMBER": "the KM does not speak TLS here: is ssl = true in its km.cfg?",
        "CERTIFICATE_REQUIRED": "the KM wants a client certificate: set cert_file and key_file",
        "UNKNOWN_CA": "the KM does not trust the CA that signed this client's certificate",
        "BAD_CERTIFICATE": "the KM refused this client's certificate",
        "CERTIFICATE_EXPIRED": "a certificate has expired: issue new ones (enstratus-workers tls init)",
        "PROTOCOL_VERSION": "the two ends share no TLS version (the KM speaks TLS 1.3 only)",
        "UNSUPPORTED_PROTOCOL": "the two ends share no TLS version (the KM speaks TLS 1.3 only)",
    }
    hint = next((h for key, h in hints.items() if key in reason), "TLS handshake failed")
    return f"{hint} ({exc.reason or exc})"
