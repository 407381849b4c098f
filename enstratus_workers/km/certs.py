"""``enstratus-workers tls init``: a private CA, the KM's certificate and one per worker host.

Everything for ``ssl = true`` on both ends, in one directory (default ``services/km/tls``)::

    ca.crt  ca.key                   the CA both ends trust (keep ca.key offline once done)
    km-server.crt  km-server.key     the KM's; it names the hosts clients connect to
    clients/<host>.crt  <host>.key   one per worker host; CN and subjectAltName DNS = the host

Keys are ECDSA P-256 (a TLS 1.3 handshake signs with them, and P-256 signs in microseconds),
written 0600; certificates 0644. Nothing is written while any key it would replace exists,
unless ``force``: replacing a CA cuts off every host that has the old one. ``issue_clients``
adds hosts later with the existing CA, so the KM and the other hosts keep their certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enstratus_workers.km.access import valid_client_name

CA, SERVER = "ca", "km-server"
CLIENTS = "clients"
DEFAULT_DAYS = 3650   # a link meant to run for years unattended should not expire in one


class CertError(ValueError):
    """A key that exists and would be replaced, or no CA to issue from."""


class BadHostName(CertError):
    """A name given for a certificate that is no host name (or, for the KM, IP address)."""


@dataclass
class Written:
    """What a run wrote, for the command to print."""

    files: list[Path] = field(default_factory=list)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, mode: int, written: Written) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte (never briefly more open):
    a temporary file made with that mode, then renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)   # the umask may have taken bits the certificate should have
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    written.files.append(path)


def _save(base: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, written: Written) -> None:
    _write(base.with_name(base.name + ".key"), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600, written)
    _write(base.with_name(base.name + ".crt"), cert.public_bytes(serialization.Encoding.PEM), 0o644, written)


def _builder(subject: str, issuer: x509.Name | None, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(issuer or name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))   # a peer's clock a little behind
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _leaf(ca_key, ca_cert: x509.Certificate, subject: str, names: list[str], usage, days: int):
    key = _key()
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
    cert = (_builder(subject, ca_cert.subject, key.public_key(), days)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_names(names: list[str], what: str) -> list[str]:
    """``names`` without duplicates; CertError for an empty list or a name that is no host name."""
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise BadHostName(f"no {what} given")
    bad = [n for n in names if not (valid_client_name(n) or (what == "server name" and _is_ip(n)))]
    if bad:
        raise BadHostName(f"not a host name: {', '.join(ascii(n) for n in bad)} ({what}s are DNS names"
                        f"{' or IP addresses' if what == 'server name' else ''})")
    return names


def _refuse_existing(paths: list[Path]) -> None:
    existing = [p for p in paths if p.exists()]
    if existing:
        raise CertError("refusing to overwrite " + ", ".join(str(p) for p in existing)
                        + " (use --force to replace them; hosts holding the old ones are then cut off)")


def init(directory: Path, hosts: list[str], server_names: list[str], *, days: int = DEFAULT_DAYS,
         force: bool = False) -> Written:
    """A new CA, the KM's certificate (naming ``server_names``) and a client one per host."""
    hosts, server_names = check_names(hosts, "host"), check_names(server_names, "server name")
    targets = [directory / f"{CA}.key", directory / f"{SERVER}.key"]
    targets += [directory / CLIENTS / f"{h}.key" for h in hosts]
    if not force:
        _refuse_existing(targets)
    written = Written()
    ca_key = _key()
    ca_cert = (_builder("enstratus-workers KM CA", None, ca_key.public_key(), days)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    _save(directory / CA, ca_key, ca_cert, written)
    key, cert = _leaf(ca_key, ca_cert, server_names[0], server_names, ExtendedKeyUsageOID.SERVER_AUTH, days)
    _save(directory / SERVER, key, cert, written)
    _issue(directory, ca_key, ca_cert, hosts, days, written)
    return written


def issue_clients(directory: Path, hosts: list[str], *, days: int = DEFAULT_DAYS, force: bool = False) -> Written:
    """Client certificates for more hosts, signed by the CA ``init`` made in ``directory``."""
    hosts = check_names(hosts, "host")
    try:
        ca_key = serialization.load_pem_private_key((directory / f"{CA}.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((directory / f"{CA}.crt").read_bytes())
    except FileNotFoundError as exc:
        raise CertError(f"no CA in {directory} ({exc.filename} is missing): run tls init first") from None
    if not force:
        _refuse_existing([directory / CLIENTS / f"{h}.key" for h in hosts])
    written = Written()
    _issue(directory, ca_key, ca_cert, hosts, days, written)
    return written


def _issue(directory: Path, ca_key, ca_cert, hosts: list[str], days: int, written: Written) -> None:
    for host in hosts:
        key, cert = _leaf(ca_key, ca_cert, host, [host], ExtendedKeyUsageOID.CLIENT_AUTH, days)
        _save(directory / CLIENTS / host, key, cert, written)


def default_server_names() -> list[str]:
    """The names a client on this host or another may use for the KM: this host's, and loopback."""
    import socket

    return [socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1", "::1"]


def settings_hint(home: Path, directory: Path, hosts: list[str]) -> str:
    """The lines to put in ``km.cfg`` and each host's ``enstratus-km-client.cfg``."""
    def shown(path: Path) -> str:
        return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)

    lines = ["services/km/classes/km.cfg:", "  ssl = true", f"  ca_file = {shown(directory / 'ca.crt')}",
             f"  cert_file = {shown(directory / 'km-server.crt')}",
             f"  key_file = {shown(directory / 'km-server.key')}",
             "  (and list each host with its accounts in services/km/classes/km-access.cfg)"]
    for host in hosts:
        lines += [f"services/worker/classes/enstratus-km-client.cfg on {host} (copy its files there):",
                  "  ssl = true", f"  ca_file = {shown(directory / 'ca.crt')}",
                  f"  cert_file = {shown(directory / CLIENTS / (host + '.crt'))}",
                  f"  key_file = {shown(directory / CLIENTS / (host + '.key'))}"]
    return "\n".join(lines)
