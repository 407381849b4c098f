"""The admin daemon's ASGI app: the JSON API (with its OpenAPI spec), the pages, the metrics.

``create_app`` takes everything explicitly (the context, the token, the address it is served
at); nothing is global, so a test builds as many apps as it likes against as many temporary
homes. The app does not own the context: whoever opened it (the daemon, a test) closes it.

In front of the routes, outermost first: ``Guard`` (body cap, hardening headers, log of
changes), ``Gate`` (Host, then Origin of changes), ``StrictBody`` (strict JSON bodies),
``SubmitLane`` (a single ``POST /jobs`` answered without FastAPI's layers). The
sessions and the count of wrong tokens live in the app (``app.state``), so in this process.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from ..config.settings import Secret
from ..metrics import make_registry
from . import errors, fragments, pages
from .auth import Tokens, require_token
from .context import AdminContext
from .gate import Gate, allowed_hosts
from .guard import Guard
from .pageapi import page_api_router
from .resources import api_router
from .sessions import SessionStore
from .strictbody import SafeJSONResponse, StrictBody
from .submitlane import SubmitLane
from .throttle import Throttle

DESCRIPTION = """The HTTP admin API of the enstratus-workers service.

Every call needs the admin token: `Authorization: Bearer <token>` (the token is in
`services/worker/run/admin.token` unless `admin.cfg` sets one); the pages' session cookie is not
good here. Request bodies are strict JSON (UTF-8 strings, finite numbers). Desired state
(instances, queues) is kept in the provisioning DB; subscribers follow it. Errors: 401 no or
wrong token, 403 a change sent from another origin, 404 no such thing, 409 contradicts the
stored state, 421 a Host that is not this daemon's address, 422 invalid values, 429 too many
wrong tokens from this address (see Retry-After), 503 database or queue unreachable (nothing
changed).
"""


def create_app(ctx: AdminContext, token: Secret, address: tuple[str, int] | None = None) -> FastAPI:
    """The app for ``ctx``, wanting ``token``, served at ``address`` (host, port; default
    ``admin.cfg``'s; the daemon passes the port it really bound, which matters for port 0)."""
    host, port = address or (ctx.admin.host, ctx.admin.port)
    app = FastAPI(title="enstratus-workers admin", version="1", description=DESCRIPTION,
                  default_response_class=SafeJSONResponse,
                  openapi_url=None, docs_url=None, redoc_url=None)  # the spec is served below, with the token
    app.state.ctx = ctx
    app.state.tokens = Tokens(token)
    app.state.sessions = SessionStore(ctx.admin.session_idle, ctx.admin.session_max)
    app.state.throttle = Throttle()
    app.state.metrics = make_registry(ctx.settings, ctx.layout, dbs=ctx.dbs, depths=ctx.queues)
    errors.install(app)
    app.include_router(api_router())
    app.include_router(page_api_router())
    app.include_router(pages.router)
    app.include_router(fragments.router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi_spec():
        return JSONResponse(app.openapi())

    app.add_middleware(SubmitLane)  # added first: the innermost of ours
    app.add_middleware(StrictBody)
    app.add_middleware(Gate, hosts=allowed_hosts(host, port, ctx.admin.server_names))
    app.add_middleware(Guard, max_body=ctx.admin.max_body)  # added last: the outermost
    return app
