"""The merchant console (``/console``): a small server-driven web page over the API's own data.

* **Sign-in.** A form takes an API token (a merchant's, or an operator's, who then picks a
  merchant); the token is kept in an HttpOnly, SameSite=Strict cookie (``CONSOLE_COOKIE``). The
  same cookie authenticates the console's GET requests to ``/v1`` (the browser's EventSource
  cannot send an Authorization header): deps.py accepts it for GET and HEAD only.
* **CSRF.** Every form carries a token: on the sign-in form a random value also set in a
  short-lived cookie (double submit); once signed in, HMAC-SHA256 of the session's token hash
  (stateless, survives restarts, unknown to another site). A POST without the right one is 403.
* **Live.** The page opens ``/v1/merchants/{id}/visits/stream`` with EventSource; each visit
  event re-fetches the walk-ins, funnel and map fragments (server-rendered HTML); the funnel also
  (and the walk-ins) every 5 s. Pause, resume, redeem and forecast are plain form posts (they work without script).
* **Assets.** Jinja2 templates, one CSS and one small script, all package data here; the map is
  an SVG drawn on the server (svgmap.py). Nothing is fetched from anywhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from engine.api.console import svgmap
from engine.api.deps import CONSOLE_COOKIE
from engine.api.errors import AccessDenied, ApiError
from engine.api.live import LiveStores
from engine.api.outcomes import OutcomeLog, merchant_report
from engine.api.redemptions import DETAILS, RedemptionDesk
from engine.api.state import ApiState, Principal
from engine.api.visits import VisitLog

HERE = Path(__file__).parent
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(["html"]),  # every value escaped, but |safe (the SVG)
    )
)
static = StaticFiles(directory=str(HERE / "static"))
router = APIRouter(prefix="/console", include_in_schema=False)

LOGIN_CSRF_COOKIE = "geopush_console_login"
RANGES = {"today": "today (UTC)", "7d": "last 7 days", "30d": "last 30 days"}


def csrf_for(token: str) -> str:
    key = hashlib.sha256(token.encode()).digest()
    return hmac.new(key, b"geopush-console-csrf", "sha256").hexdigest()


def _signed_in(request: Request) -> tuple[Principal, str] | None:
    token = request.cookies.get(CONSOLE_COOKIE)
    if not token:
        return None
    state: ApiState = request.state.api_state
    who = state.authenticate(token)
    return None if who is None else (who, token)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > 4 * 1024 * 1024:
        raise ApiError("the form is too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _to_login(msg: str = "") -> RedirectResponse:
    url = "/console/login" + (f"?msg={quote(msg)}" if msg else "")
    return RedirectResponse(url, status_code=303)


def _window(rng: str) -> tuple[float, float]:
    now = time.time()
    day = math.floor(now / 86400) * 86400
    days = {"today": 0, "7d": 6, "30d": 29}.get(rng, 0)
    return day - days * 86400, math.inf


def _merchants(stores: LiveStores) -> list[tuple[str, int]]:
    """(merchant_id, live stores) for every merchant with a live store, by id."""
    counts: dict[str, int] = {}
    for _, m in stores.catalog.owners():
        counts[m] = counts.get(m, 0) + 1
    return sorted(counts.items())


class _Session:
    """A signed-in request for one merchant's pages."""

    def __init__(self, request: Request, who: Principal, token: str, merchant_id: str) -> None:
        if who.scope is not None and who.scope != merchant_id:
            raise AccessDenied(f"this token is for merchant {who.scope!r}, not {merchant_id!r}")
        self.request = request
        self.who = who
        self.merchant_id = merchant_id
        self.csrf = csrf_for(token)
        rng = request.query_params.get("range", "today")
        self.range = rng if rng in RANGES else "today"

    def ctx(self, **more: Any) -> dict[str, Any]:
        return {
            "who": self.who,
            "merchant_id": self.merchant_id,
            "csrf": self.csrf,
            "range": self.range,
            "ranges": RANGES,
            "base": f"/console/m/{quote(self.merchant_id)}",
            **more,
        }

    def check_csrf(self, form: dict[str, str]) -> None:
        if not hmac.compare_digest(form.get("csrf", ""), self.csrf):
            raise AccessDenied("the form's CSRF token is missing or wrong: reload the page")


def _session(request: Request, merchant_id: str) -> _Session | RedirectResponse:
    got = _signed_in(request)
    if got is None:
        return _to_login("sign in first")
    return _Session(request, got[0], got[1], merchant_id)


# --- sign-in -----------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    value = secrets.token_urlsafe(24)
    resp = templates.TemplateResponse(
        request, "login.html", {"csrf": value, "msg": request.query_params.get("msg", "")}
    )
    resp.set_cookie(
        LOGIN_CSRF_COOKIE, value, max_age=900, httponly=True, samesite="strict", path="/console"
    )
    return resp


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    want = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not want or not hmac.compare_digest(form.get("csrf", ""), want):
        return _to_login("the sign-in form expired; try again")
    token = form.get("token", "").strip()
    state: ApiState = request.state.api_state
    if not token or state.authenticate(token) is None:
        return _to_login("unknown or revoked token")
    resp = RedirectResponse("/console", status_code=303)
    resp.set_cookie(CONSOLE_COOKIE, token, httponly=True, samesite="strict", path="/")
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    got = _signed_in(request)
    form = await _form(request)
    if got is not None and not hmac.compare_digest(form.get("csrf", ""), csrf_for(got[1])):
        raise AccessDenied("the form's CSRF token is missing or wrong: reload the page")
    resp = _to_login("signed out")
    resp.delete_cookie(CONSOLE_COOKIE, path="/")
    return resp


@router.get("", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    got = _signed_in(request)
    if got is None:
        return _to_login()
    who, token = got
    if who.scope is not None:
        return RedirectResponse(f"/console/m/{quote(who.scope)}", status_code=303)
    stores: LiveStores = request.state.live_stores
    return templates.TemplateResponse(
        request, "pick.html", {"who": who, "csrf": csrf_for(token), "merchants": _merchants(stores)}
    )


# --- the merchant's page ------------------------------------------------------------------------


async def _walkins(s: _Session) -> dict[str, Any]:
    req = s.request
    visits: VisitLog = req.state.visit_log
    outcomes: OutcomeLog = req.state.outcome_log
    await asyncio.to_thread(visits.catch_up)
    await asyncio.to_thread(outcomes.catch_up)
    recent = await asyncio.to_thread(outcomes.recent_enters, s.merchant_id, 40)
    open_rows = await asyncio.to_thread(visits.open_visits, s.merchant_id)
    inside = {json.loads(r.payload)["visit_id"] for r in open_rows}
    stores: LiveStores = req.state.live_stores
    names = {st.store_id: (st.name or st.store_id) for st in _stores(stores, s.merchant_id)}
    by_store: dict[str, list[dict[str, Any]]] = {}
    for v in recent:
        v["inside"] = v["visit_id"] in inside
        v["time"] = time.strftime("%H:%M:%S", time.gmtime(v["ts"]))
        by_store.setdefault(v["store_id"], []).append(v)
    groups = [
        {"store_id": sid, "name": names.get(sid, sid), "visits": vs,
         "inside": sum(1 for v in vs if v["inside"])}
        for sid, vs in sorted(by_store.items(), key=lambda kv: -kv[1][0]["id"])
    ]  # fmt: skip
    return {"groups": groups, "inside": len(inside)}


async def _funnel(s: _Session) -> dict[str, Any]:
    req = s.request
    visits: VisitLog = req.state.visit_log
    outcomes: OutcomeLog = req.state.outcome_log
    await asyncio.to_thread(visits.catch_up)
    lo, hi = _window(s.range)
    rep = await asyncio.to_thread(merchant_report, outcomes, s.merchant_id, lo, hi)
    v = rep["visits"]
    steps = [
        ("visits", "Visits", v["new"] + v["returning"], f"{v['new']} new · {v['returning']} returning"),
        ("pushes", "Pushes", rep["pushes"], f"{rep['held_out']} held out"),
        ("redemptions", "Redemptions", rep["redemptions"], "coupons used"),
        ("orders", "Orders", rep["orders"], f"{rep['new_customers']} new customers"),
        ("revenue", "Revenue", f"{rep['revenue']:.2f}", "attributed"),
    ]
    return {"report": rep, "steps": steps}


def _stores(stores: LiveStores, merchant_id: str) -> list[Any]:
    page, _ = stores.find(merchant_id, merchant_id=merchant_id, limit=1000)
    return page


async def _map(s: _Session, walkins: dict[str, Any]) -> str:
    stores: LiveStores = s.request.state.live_stores
    outcomes: OutcomeLog = s.request.state.outcome_log
    recent = [v for g in walkins["groups"] for v in g["visits"]]
    users = sorted({v["user"] for v in recent})[:500]
    fixes = await asyncio.to_thread(outcomes.last_fixes, users)
    dots, seen = [], set()
    counts: dict[str, int] = {}
    for v in recent:
        counts[v["store_id"]] = counts.get(v["store_id"], 0) + 1
        if v["user"] in fixes and v["user"] not in seen:
            seen.add(v["user"])
            lon, lat = fixes[v["user"]]
            label = f"{v['user']} ({'returning' if v['returning'] else 'new'}) at {v['store_id']}"
            dots.append(svgmap.Dot(lon, lat, bool(v["returning"]), label))
    return svgmap.render(_stores(stores, s.merchant_id), dots, counts)


def _campaigns(s: _Session) -> list[dict[str, Any]]:
    live = getattr(s.request.state, "live_campaigns", None)
    if live is None:
        return []
    return [v.to_dict() for v in live.find(s.who.scope, s.merchant_id)]


@router.get("/m/{merchant_id}", response_class=HTMLResponse)
async def dashboard(request: Request, merchant_id: str) -> Response:
    s = _session(request, merchant_id)
    if isinstance(s, RedirectResponse):
        return s
    walkins = await _walkins(s)
    ctx = s.ctx(
        walkins=walkins,
        funnel=await _funnel(s),
        map_svg=await _map(s, walkins),
        campaigns=_campaigns(s),
        flash=request.query_params.get("flash", ""),
        stream=f"/v1/merchants/{quote(merchant_id)}/visits/stream",
    )
    return templates.TemplateResponse(request, "dashboard.html", ctx)


@router.get("/m/{merchant_id}/fragment/{name}", response_class=HTMLResponse)
async def fragment(request: Request, merchant_id: str, name: str) -> Response:
    s = _session(request, merchant_id)
    if isinstance(s, RedirectResponse):
        return Response(status_code=401)
    if name == "walkins":
        return templates.TemplateResponse(request, "_walkins.html", s.ctx(walkins=await _walkins(s)))
    if name == "funnel":
        return templates.TemplateResponse(request, "_funnel.html", s.ctx(funnel=await _funnel(s)))
    if name == "map":
        return HTMLResponse(await _map(s, await _walkins(s)))
    return Response(status_code=404)


def _back(s: _Session, flash: str) -> RedirectResponse:
    return RedirectResponse(f"{s.ctx()['base']}?range={s.range}&flash={quote(flash)}", status_code=303)


@router.post("/m/{merchant_id}/campaigns/{campaign_id}/{action}")
async def campaign_action(request: Request, merchant_id: str, campaign_id: str, action: str) -> Response:
    s = _session(request, merchant_id)
    if isinstance(s, RedirectResponse):
        return s
    form = await _form(request)
    s.check_csrf(form)
    live = getattr(request.state, "live_campaigns", None)
    if live is None or action not in ("pause", "resume", "forecast"):
        return Response(status_code=404)
    view = live.view(campaign_id, s.who.scope)
    if view.merchant_id != merchant_id:
        raise AccessDenied(f"campaign {campaign_id!r} is not merchant {merchant_id!r}'s")
    if action == "forecast":
        result = await _forecast(live, campaign_id, form.get("trace", "").encode(), s.who)
        return templates.TemplateResponse(
            request, "forecast.html", s.ctx(campaign_id=campaign_id, result=result)
        )
    live.set_paused(campaign_id, action == "pause", s.who)
    return _back(s, f"campaign {campaign_id} {'paused' if action == 'pause' else 'resumed'}")


async def _forecast(live: Any, campaign_id: str, body: bytes, who: Principal) -> dict[str, Any]:
    """The what-if of POST /v1/campaigns/{id}/forecast, for a trace pasted in the form."""
    from engine.api import forecast
    from engine.api.routers.campaigns import _forecasting

    if not body.strip():
        return {"error": "paste a trace: JSONL wire events, one per line (as geopush replay reads)"}
    if _forecasting.locked():
        return {"error": "a forecast is already running; retry when it is done"}
    async with _forecasting:
        proposed, events, problems = await asyncio.to_thread(forecast.parse_trace, body)
        if problems:
            return {"error": f"{len(problems)} problem(s) in the trace", "problems": problems}
        target, version = live.forecast_target(campaign_id, proposed, who)
        result = await asyncio.to_thread(
            forecast.run_forecast, live.stores_snapshot(), live.with_campaign(target), target,
            events, config=live.target.config(), profiles=live.target.profiles(),
        )  # fmt: skip
    return {**result, "version": version}


@router.post("/m/{merchant_id}/redeem")
async def redeem(request: Request, merchant_id: str) -> Response:
    s = _session(request, merchant_id)
    if isinstance(s, RedirectResponse):
        return s
    form = await _form(request)
    s.check_csrf(form)
    user, code = form.get("user", "").strip(), form.get("code", "").strip()
    if not user or not code:
        return _back(s, "give the user and the code to redeem")
    desk: RedemptionDesk = request.state.redemptions
    try:
        ans = await desk.redeem(user, merchant_id, code, form.get("request_id") or None)
    except ApiError as exc:
        return _back(s, str(exc))
    return _back(s, f"{display(ans['code'])}: {ans['status']}: {DETAILS.get(ans['status'], '')}")


def display(code: str) -> str:
    from engine.loop import CODE_LEN, display_code

    return display_code(code) if len(code) == CODE_LEN else code


__all__ = ["CONSOLE_COOKIE", "csrf_for", "router", "static", "templates"]
