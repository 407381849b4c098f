"""The operator's pages: Server Status, Launch, Jobs, and the login form that opens them.

A page asked for without a session answers 401 with the login form as its body, so a browser
shows the form and a script sees the refusal. The login form posts the token; a right one opens
a session (see ``sessions``), sets its cookie for ``/ui`` (see ``auth``) and goes back to the
page asked for; wrong ones count towards the address's lockout (``throttle``). Logging out
(``POST /ui/logout``, under the cookie's path so the browser sends it) ends the session on the
server. The pages are rendered here; their script refreshes the live part from
``/ui/fragments/...`` (rendered by ``render``) and calls ``/ui/api/...`` (``pageapi``).
"""

from __future__ import annotations

from functools import lru_cache
from html import escape
from importlib.resources import files
from string import Template
from typing import Optional
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..db.schema import STATUSES
from . import jobstats, render
from .auth import COOKIE, COOKIE_PATH, check_token, page_session_ok
from .context import ctx_of
from .figures import overview
from .strictbody import printable

router = APIRouter(include_in_schema=False)

PAGES = (("status", "/ui/status", "Server Status"), ("launch", "/ui/launch", "Launch"),
         ("jobs", "/ui/jobs", "Jobs"))
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_NO_STORE = {"Cache-Control": "no-store"}  # figures and forms must never come from a cache


@lru_cache(maxsize=None)
def _template(name: str) -> Template:
    return Template(files(__package__).joinpath("templates", name).read_text("utf-8"))


@lru_cache(maxsize=None)
def _static(name: str) -> bytes:
    return files(__package__).joinpath("static", name).read_bytes()


def _login_page(next_path: str, message: str = "", status: int = 401, headers: dict | None = None) -> HTMLResponse:
    text = _template("login.html").substitute(next=escape(_safe_next(next_path)), message=escape(message))
    return HTMLResponse(text, status_code=status,
                        headers={**_NO_STORE, "WWW-Authenticate": "Bearer", **(headers or {})})


def _safe_next(path: str) -> str:
    """Only our own pages: a ``next`` pointing elsewhere would make the form an open redirect."""
    return path if any(path == p for _, p, _ in PAGES) else PAGES[0][1]


def _page(request: Request, page: str, body: str) -> HTMLResponse:
    ctx = ctx_of(request)
    nav = " ".join(f'<a href="{path}" id="nav-{key}"{" class=current" if key == page else ""}>{title}</a>'
                   for key, path, title in PAGES)
    title = next(t for k, _, t in PAGES if k == page)
    text = _template("layout.html").substitute(title=title, page=page, nav=nav, body=body,
                                               refresh_ms=int(ctx.admin.refresh * 1000))
    return HTMLResponse(text, headers=_NO_STORE)


def _authorized(request: Request) -> bool:
    return page_session_ok(request)


# -- login ---------------------------------------------------------------------------------------
@router.get("/login")
def login_form(next: str = Query(default="/ui/status", max_length=200)):
    return _login_page(next, status=200)


@router.post("/login")
async def login(request: Request):
    # a plain urlencoded form, read by hand: two fields do not justify a multipart parser
    body = await request.body()
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than the form has
        return _login_page("/ui/status", "Send the login form's fields only.", status=400)
    token = (fields.get("token") or [""])[0].strip()
    next_path = _safe_next((fields.get("next") or [""])[0])
    try:
        right = check_token(request, token)
    except HTTPException as exc:  # locked out: say so on the form
        return _login_page(next_path, str(exc.detail), status=exc.status_code, headers=exc.headers)
    if not right:
        return _login_page(next_path, "Wrong token.")
    response = RedirectResponse(next_path, status_code=303)
    admin = ctx_of(request).admin
    response.set_cookie(COOKIE, request.app.state.sessions.open(), max_age=admin.session_max, httponly=True,
                        samesite="strict", path=COOKIE_PATH, secure=request.url.scheme == "https")
    return response


@router.post("/ui/logout")
def logout(request: Request):
    request.app.state.sessions.close(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# -- pages ---------------------------------------------------------------------------------------
@router.get("/")
def root():
    return RedirectResponse(PAGES[0][1], status_code=303)  # the cookie is not sent here: the page knows


@router.get("/ui/status")
def status_page(request: Request):
    if not _authorized(request):
        return _login_page("/ui/status")
    live = render.status_fragment(overview(ctx_of(request)))
    return _page(request, "status", _template("status.html").substitute(live=live))


@router.get("/ui/launch")
def launch_page(request: Request):
    if not _authorized(request):
        return _login_page("/ui/launch")
    ctx = ctx_of(request)
    default = ctx.settings.worker.default_queue
    names = [q.name for q in ctx.store.queues()]
    queues = "".join(f'<option value="{escape(q)}"{" selected" if q == default else ""}>{escape(q)}</option>'
                     for q in names)
    actions = "".join(f'<option value="{escape(a)}">' for a in (ctx.registry.names() if ctx.registry else []))
    return _page(request, "launch", _template("launch.html").substitute(queues=queues, actions=actions, live=""))


@router.get("/ui/jobs")
def jobs_page(request: Request):
    if not _authorized(request):
        return _login_page("/ui/jobs")
    options = '<option value="">all</option>' + "".join(f'<option value="{s}">{s}</option>' for s in STATUSES)
    return _page(request, "jobs", _template("jobs.html").substitute(statuses=options, live=_jobs_live(request, None)))


# -- the live parts and the static files ---------------------------------------------------------
def _fragment(html_text: str) -> HTMLResponse:
    return HTMLResponse(html_text, headers=_NO_STORE)


def _jobs_live(request: Request, status: Optional[str]) -> str:
    ctx = ctx_of(request)
    jobs = [printable(j.as_dict()) for j in ctx.dbs.jobs.list(status=status, limit=50)]
    return render.jobs_fragment(jobstats.stats(ctx.store, ctx.dbs.provisioning), jobs)


@router.get("/ui/fragments/status")
def status_fragment(request: Request):
    if not _authorized(request):
        raise HTTPException(status_code=401, detail="log in again")
    return _fragment(render.status_fragment(overview(ctx_of(request))))


@router.get("/ui/fragments/jobs")
def jobs_fragment(request: Request, status: Optional[str] = Query(default=None, max_length=20)):
    if not _authorized(request):
        raise HTTPException(status_code=401, detail="log in again")
    return _fragment(_jobs_live(request, status if status in STATUSES else None))


@router.get("/ui/fragments/job/{job_id}")
def job_fragment(request: Request, job_id: int = Path(ge=1, le=2**63 - 1)):
    if not _authorized(request):
        raise HTTPException(status_code=401, detail="log in again")
    job = ctx_of(request).dbs.jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return _fragment(render.job_fragment(printable(job.as_dict())))


@router.get("/ui/static/{name}")
def static(request: Request, name: str):
    if not _authorized(request):
        raise HTTPException(status_code=401, detail="log in first")
    if name not in STATIC:
        raise HTTPException(status_code=404, detail="no such file")
    return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "private, max-age=60"})
