"""Who may talk to the admin daemon at all: the right ``Host``, and for changes, our own pages.

**Host** (every request): the ``Host`` header must name the address the daemon serves
(``admin.cfg``'s host and port; when bound to loopback also ``127.0.0.1``, ``localhost`` and
``[::1]`` at that port; and any of ``admin.cfg``'s ``server_names``, e.g. the name a TLS proxy
in front forwards). A page of another site whose name was re-pointed at 127.0.0.1 (DNS
rebinding) sends its own name and gets 421, so it can read nothing.

**Origin** (every request but GET, HEAD and OPTIONS): a browser says where a request comes from.
``Sec-Fetch-Site``, when sent, must be ``same-origin``; ``Origin``, when sent, must be this
daemon's own (``http`` or ``https``, and the host and port the request is sent to). A form on another port of 127.0.0.1 counts as the same
*site* for cookies, but not as the same *origin*: it is refused with 403, whatever it carries.
A request with neither header does not come from a browser page (curl, scripts, monitoring):
it is marked ``scripted`` and then only the bearer token is good for it, never a session cookie.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SCRIPTED = "enstratus.scripted"   # scope key: a change request that no browser page sent
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The ``Host`` values that name the daemon listening on ``host:port`` (and ``extra`` ones)."""
    name = f"[{host}]" if ":" in host and not host.startswith("[") else host
    names = {name.lower()}
    if _is_loopback(host):
        names.update(LOOPBACK_NAMES)
    hosts = {f"{n}:{port}" for n in names}
    if port == 80:
        hosts.update(names)
    return frozenset(hosts | {e.lower() for e in extra})


def is_scripted(scope) -> bool:
    return bool(scope.get(SCRIPTED))


class Gate:
    """ASGI middleware: the Host check, then the Origin check of change requests."""

    def __init__(self, app, hosts: frozenset[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k: v for k, v in scope.get("headers") or []}
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if host not in self.hosts:
            return await _refuse(scope, receive, send, 421, "this is not the address the admin daemon serves "
                                 f"(Host '{host[:100]}'); use {min(self.hosts)}")
        if scope.get("method") in SAFE_METHODS:
            return await self.app(scope, receive, send)
        site = headers.get(b"sec-fetch-site")
        origin = headers.get(b"origin")
        if site is not None and site != b"same-origin":
            return await _refuse(scope, receive, send, 403, f"cross-origin request refused (Sec-Fetch-Site: "
                                 f"{site.decode('latin-1')[:40]})")
        if origin is not None:
            if origin.lower() not in (f"http://{host}".encode("latin-1"), f"https://{host}".encode("latin-1")):
                return await _refuse(scope, receive, send, 403, f"cross-origin request refused (Origin: "
                                     f"{origin.decode('latin-1')[:100]})")
        elif site is None:
            scope = {**scope, SCRIPTED: True}
        await self.app(scope, receive, send)


async def _refuse(scope, receive, send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
