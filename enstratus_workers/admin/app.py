"""The admin daemon's ASGI app: the JSON API (with its OpenAPI spec), the pages, the metrics.

``create_app`` takes everything explicitly (the context and the token); nothing is global, so a
test builds as many apps as it likes against as many temporary homes. The app does not own the
context: whoever opened it (the daemon, a test) closes it.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from ..config.settings import Secret
from ..metrics import make_registry
from . import errors, pages
from .auth import Tokens, require_token
from .context import AdminContext
from .guard import Guard
from .resources import api_router

DESCRIPTION = """The HTTP admin API of the enstratus-workers service.

Every call needs the admin token: `Authorization: Bearer <token>` (the token is in
`services/worker/run/admin.token` unless `admin.cfg` sets one), or the session cookie set by the
login form of the pages. Desired state (instances, queues) is kept in the provisioning DB;
subscribers follow it. Errors: 401 no or wrong token, 404 no such thing, 409 contradicts the
stored state, 422 invalid values, 503 database or queue unreachable (nothing changed).
"""


def create_app(ctx: AdminContext, token: Secret) -> FastAPI:
    app = FastAPI(title="enstratus-workers admin", version="1", description=DESCRIPTION,
                  openapi_url=None, docs_url=None, redoc_url=None)  # the spec is served below, with the token
    app.state.ctx = ctx
    app.state.tokens = Tokens(token)
    app.state.metrics = make_registry(ctx.settings, ctx.layout, dbs=ctx.dbs, depths=ctx.queues)
    errors.install(app)
    app.include_router(api_router())
    app.include_router(pages.router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi_spec():
        return JSONResponse(app.openapi())

    app.add_middleware(Guard, max_body=ctx.admin.max_body)
    return app
