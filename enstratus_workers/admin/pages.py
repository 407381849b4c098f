"""The operator's pages: Server Status (with the charts of the last hour), Launch, Jobs (with
filters, and a page per job), Dead, Audit, and the login form that opens them.

A page asked for without a session answers 401 with the login form as its body, so a browser
shows the form and a script sees the refusal. The login form posts the token; a right one opens
a session (see ``sessions``), sets its cookie for ``/ui`` (see ``auth``) and goes back to the
page asked for; wrong ones count towards the address's lockout (``throttle``). Logging out
(``POST /ui/logout``, under the cookie's path so the browser sends it) ends the session on the
server. Both are recorded in the audit log (``session.login``, ``session.logout``), which names
the session by a short id (``auth.session_actor``). The pages are rendered here; their script
refreshes the live parts from ``/ui/fragments/...`` (``fragments``, rendered by ``render*``) and
calls ``/ui/api/...`` (``pageapi``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from importlib.resources import files
from string import Template
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..db.schema import STATUSES
from . import fragments
from .auditing import record
from .auth import COOKIE, COOKIE_PATH, check_token, page_session_ok, session_actor
from .context import ctx_of

router = APIRouter(include_in_schema=False)

PAGES = (("status", "/ui/status", "Server Status"), ("launch", "/ui/launch", "Launch"),
         ("jobs", "/ui/jobs", "Jobs"), ("dead", "/ui/dead", "Dead"), ("audit", "/ui/audit", "Audit"))
_JOB_PAGE = re.compile(r"/ui/jobs/[1-9][0-9]{0,18}")
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
    return path if any(path == p for _, p, _ in PAGES) or _JOB_PAGE.fullmatch(path) else PAGES[0][1]


def _page(request: Request, page: str, body: str, title: str | None = None, status: int = 200) -> HTMLResponse:
    ctx = ctx_of(request)
    nav = " ".join(f'<a href="{path}" id="nav-{key}"{" class=current" if key == page else ""}>{title}</a>'
                   for key, path, title in PAGES)
    title = title or next(t for k, _, t in PAGES if k == page)
    text = _template("layout.html").substitute(title=escape(title), page=page, nav=nav, body=body,
                                               refresh_ms=int(ctx.admin.refresh * 1000))
    return HTMLResponse(text, status_code=status, headers=_NO_STORE)


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
    session = request.app.state.sessions.open()
    await run_in_threadpool(record, request, "session.login", "the pages", 303, actor=session_actor(session))
    response.set_cookie(COOKIE, session, max_age=admin.session_max, httponly=True,
                        samesite="strict", path=COOKIE_PATH, secure=request.url.scheme == "https")
    return response


@router.post("/ui/logout")
def logout(request: Request):
    session = request.cookies.get(COOKIE)
    if request.app.state.sessions.use(session):   # a session that was open: its end is worth a row
        record(request, "session.logout", "the pages", 303, actor=session_actor(session))
    request.app.state.sessions.close(session)
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
    ctx = ctx_of(request)
    return _page(request, "status", _template("status.html").substitute(
        live=fragments.status_html(ctx), charts=fragments.charts_html(ctx)))


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


# A page whose address carries filters (a bookmark, the audit's "older" link) is sent without
# its live part, which the script then asks for with those filters: the fragment checks them.
_LOADING = '<p class="hint">Loading…</p>'


@router.get("/ui/jobs")
def jobs_page(request: Request):
    if not _authorized(request):
        return _login_page("/ui/jobs")
    ctx = ctx_of(request)
    options = '<option value="">all</option>' + "".join(f'<option value="{s}">{s}</option>' for s in STATUSES)
    queues = '<option value="">all</option>' + "".join(
        f'<option value="{escape(q)}">{escape(q)}</option>' for q in ctx.watched_queues())
    live = _LOADING if request.url.query else fragments.jobs_html(ctx)
    return _page(request, "jobs", _template("jobs.html").substitute(statuses=options, queues=queues, live=live))


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: str):
    path = f"/ui/jobs/{job_id}"
    if not _authorized(request):
        return _login_page(path if _JOB_PAGE.fullmatch(path) else "/ui/jobs")
    ctx = ctx_of(request)
    job = ctx.dbs.jobs.get(int(job_id)) if _JOB_PAGE.fullmatch(path) and int(job_id) < 2**63 else None
    if job is None:
        return _page(request, "missing", f'<p class="error" id="not-found">There is no job {escape(job_id[:40])}: '
                     'it never existed, or retention has deleted it. <a href="/ui/jobs">All jobs</a></p>',
                     title="No such job", status=404)
    body = (f'<p id="message" class="message" role="status"></p><div id="live" '
            f'data-fragment="/ui/fragments/jobpage/{job.job_id}">{fragments.job_page_html(ctx, job)}</div>')
    return _page(request, "job", body, title=f"Job {job.job_id}")


@router.get("/ui/dead")
def dead_page(request: Request):
    if not _authorized(request):
        return _login_page("/ui/dead")
    return _page(request, "dead", '<p id="message" class="message" role="status"></p><div id="live" '
                 f'data-fragment="/ui/fragments/dead">{fragments.dead_html(ctx_of(request))}</div>')


@router.get("/ui/audit")
def audit_page(request: Request):
    if not _authorized(request):
        return _login_page("/ui/audit")
    options = '<option value="">all</option>' + "".join(
        f'<option value="{escape(a)}">{escape(a)}</option>' for a in fragments.audit_actions())
    live = _LOADING if request.url.query else fragments.audit_html(request, None, None)
    return _page(request, "audit", _template("audit.html").substitute(actions=options, live=live))


@router.get("/ui/static/{name}")
def static(request: Request, name: str):
    if not _authorized(request):
        raise HTTPException(status_code=401, detail="log in first")
    if name not in STATIC:
        raise HTTPException(status_code=404, detail="no such file")
    return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "private, max-age=60"})


