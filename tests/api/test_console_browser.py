"""The merchant console in a real browser: headless Chromium (the system's /usr/bin/chromium)
driven by playwright, against `geopush run --http` with the real core and a real broker.

Sign in, see a walk-in appear live (the page's own EventSource on the SSE feed), redeem a
coupon through the API and see the funnel change, pause the campaign and see no more pushes
from it, run a what-if. A screenshot of each page is kept (GEOPUSH_ARTIFACTS, else the test's
tmp dir; the paths are printed)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from daemon.conftest import (  # noqa: F401  (broker: the daemon's real-broker fixture)
    Collector,
    broker,
    gps,
    publish_all,
    running_service,
)

from engine.api.state import ApiState
from engine.loop import display_code

from .conftest import circle, collection, square

CHROMIUM = os.environ.get("GEOPUSH_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # pragma: no cover
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(
        async_playwright is None, reason="the console's browser tests need `playwright` (test extra)"
    ),
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"no Chromium at {CHROMIUM} (apt install chromium; or set GEOPUSH_CHROMIUM)",
    ),
]

A = (24.9400, 60.1700)
B = (24.9450, 60.1710)
WAIT_MS = 15_000  # generous: no timing is asserted


def files(folder: Path) -> SimpleNamespace:
    fences = folder / "fences.geojson"
    fences.write_text(json.dumps(collection(
        circle("s1", "m1", *A, r=40, name="Cafe Aalto"),
        square("s2", "m1", *B, d=0.0008, name="Kiosk"),
        circle("s3", "m2", 23.76, 61.498),
    )))  # fmt: skip
    camps = folder / "campaigns.json"
    coupon = {"title": "2 for 1 coffee", "value": 3, "currency": "EUR", "expires_in_s": 3600}
    camps.write_text(json.dumps([
        {"id": "c1", "merchant_id": "m1", "trigger": "enter", "coupon": coupon},
    ]))  # fmt: skip
    return SimpleNamespace(fences=fences, campaigns=camps)


def artifacts(tmp_path: Path) -> Path:
    d = Path(os.environ.get("GEOPUSH_ARTIFACTS") or tmp_path / "artifacts") / "console"
    d.mkdir(parents=True, exist_ok=True)
    return d


async def test_the_console_in_a_browser(broker, tmp_path):  # noqa: F811
    state = tmp_path / "state.db"
    st = ApiState(state)
    m1 = st.create_token("merchant", "m1", name="Cafe Aalto")[1]
    op = st.create_token("operator", name="ops")[1]
    st.close()
    shots = artifacts(tmp_path)
    t0 = time.time()
    async with (
        Collector(broker.url, ["geopush/push/#"]) as col,
        running_service(broker.url, state, world=files(tmp_path), http="127.0.0.1:0") as svc,  # type: ignore[arg-type]
        async_playwright() as pw,
    ):
        url = f"http://127.0.0.1:{svc.api.port}"
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            await page.goto(f"{url}/console")
            await expect(page.locator("#login")).to_be_visible()  # not signed in: the form
            await page.screenshot(path=str(shots / "1-login.png"))
            await page.fill("#token", "gp_wrong")
            await page.click("button[type=submit]")
            await expect(page.locator(".flash")).to_contain_text("unknown or revoked token")
            await page.fill("#token", m1)
            await page.click("button[type=submit]")
            await expect(page).to_have_url(f"{url}/console/m/m1")
            for sel in ("#funnel", "#walkins", "#map svg", "#campaigns tr[data-campaign=c1]", "#redeem"):
                await expect(page.locator(sel)).to_be_visible()
            assert await page.locator("#map svg .store").count() == 2  # m1's two stores, not m2's
            # the token is in an HttpOnly cookie: no script can read it
            assert "gp_" not in await page.evaluate("document.cookie")
            await expect(page.locator("#live.on")).to_be_visible(timeout=WAIT_MS)  # EventSource open

            # a walk-in, live: the page shows it, new, with the push sent
            await publish_all(broker.url, [("geopush/events/u1", gps("u1", t0, A[1], A[0]))])
            row = page.locator("#walkins li.visit[data-user=u1]")
            await expect(row).to_be_visible(timeout=WAIT_MS)
            await expect(row.locator(".badge.new")).to_be_visible()
            await expect(row.locator(".push")).to_contain_text("c1", timeout=WAIT_MS)
            await expect(page.locator("#funnel [data-step=pushes] .value")).to_have_text("1", timeout=WAIT_MS)
            await expect(page.locator("#map svg .visitor")).to_have_count(1, timeout=WAIT_MS)
            await page.screenshot(path=str(shots / "2-dashboard-walkin.png"), full_page=True)

            # a redemption through the API: the funnel changes by itself
            await col.wait_for(lambda c: len(c.on("geopush/push/u1")) == 1)
            code = display_code(col.json_on("geopush/push/u1")[0]["code"])
            async with httpx.AsyncClient(base_url=f"{url}/v1", timeout=30) as http:
                r = await http.post(
                    "/redemptions", json={"user": "u1", "code": code},
                    headers={"Authorization": f"Bearer {m1}"},
                )  # fmt: skip
                assert r.json()["status"] == "ok", r.text
                # forms need the CSRF token, even with the sign-in cookie
            async with httpx.AsyncClient(cookies={"geopush_console": m1}, timeout=30) as browserless:
                no_csrf = await browserless.post(
                    f"{url}/console/m/m1/campaigns/c1/pause", content=b"csrf=nope",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )  # fmt: skip
                assert no_csrf.status_code == 403
                # the cookie stands in for the token on GETs of /v1 only (the EventSource)
                assert (await browserless.get(f"{url}/v1/merchants/m1/report")).status_code == 200
                no_post = await browserless.post(f"{url}/v1/campaigns/c1/pause")
                assert no_post.status_code == 401
            await expect(page.locator("#funnel [data-step=redemptions] .value")).to_have_text(
                "1", timeout=WAIT_MS
            )
            await expect(row.locator(".badge.redeemed")).to_be_visible(timeout=WAIT_MS)
            await page.screenshot(path=str(shots / "3-dashboard-redeemed.png"), full_page=True)

            # pause the campaign: no more pushes from it
            await page.click("#campaigns tr[data-campaign=c1] button[name=do]")
            await expect(page.locator("#flash")).to_contain_text("paused")
            await expect(page.locator("#campaigns tr[data-campaign=c1] .badge")).to_have_text("paused")
            await expect(page.locator("#live.on")).to_be_visible(timeout=WAIT_MS)
            await publish_all(broker.url, [("geopush/events/u2", gps("u2", t0 + 2, A[1], A[0]))])
            row2 = page.locator("#walkins li.visit[data-user=u2]")
            await expect(row2).to_be_visible(timeout=WAIT_MS)
            await expect(row2.locator(".push")).to_have_text("no push")
            await page.screenshot(path=str(shots / "4-dashboard-paused.png"), full_page=True)
            assert col.on("geopush/push/u2") == []  # the visit's batch committed no push

            # what-if: the paused campaign as it is, over a pasted trace
            await page.click("#campaigns tr[data-campaign=c1] summary")
            trace = "\n".join(
                json.dumps({"type": "gps", "user": f"f{i}", "ts": t0 + i, "lon": A[0], "lat": A[1], "acc": 5})
                for i in range(3)
            )
            await page.fill("#campaigns tr[data-campaign=c1] textarea", trace)
            await page.click("#campaigns tr[data-campaign=c1] form.forecast button")
            await expect(page.locator("#forecast")).to_contain_text("Pushes", timeout=WAIT_MS)
            await expect(page.locator("#forecast .step").nth(1).locator(".value")).to_have_text("3")
            await page.screenshot(path=str(shots / "5-forecast.png"), full_page=True)

            # an operator picks a merchant
            page2 = await browser.new_page(viewport={"width": 1280, "height": 700})
            await page2.goto(f"{url}/console/login")
            await page2.fill("#token", op)
            await page2.click("button[type=submit]")
            await expect(page2.locator("#merchants a")).to_have_count(2)
            await page2.screenshot(path=str(shots / "6-operator-pick.png"))
            await page2.click("#merchants a:text('m1')")
            await expect(page2.locator("#walkins li.visit")).to_have_count(2)
        finally:
            await browser.close()
    for p in sorted(shots.iterdir()):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        print(f"screenshot: {p}")
