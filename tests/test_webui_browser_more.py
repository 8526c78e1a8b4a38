"""The web page, issue 17's last parts, in headless Chromium against the app served by uvicorn: the gallery
pages through hundreds of outputs as it scrolls (the server lists, the page reads each PNG's infotext),
Skip mid-run ends the current image and the next still generates, and the hires / sampler parameter
controls reach the request body and the infotext."""

from __future__ import annotations

import os
import re
import time

import pytest
from PIL import Image
from playwright.sync_api import expect

from handlers.generation.outputs import FileFormat, encode
from tests.browser_support import ServerThread
from tests.test_webui_api import put_outputs
from tests.test_webui_browser import SLOW, SlowSteps, browser, errors, fill_small, make_site, page, sign_in  # noqa: F401

assert browser and errors and page  # fixtures, used by name


class PacedSteps(SlowSteps):
    """Steps of at least 0.2 s, and the step each user's generation had run when Skip reached the server."""

    def __init__(self) -> None:
        super().__init__()
        self.signaled_at: dict[str, int] = {}

    def step(self, user: str, step: int) -> None:
        time.sleep(0.14)  # + SlowSteps' 0.06
        super().step(user, step)

    def signal(self, user: str, what: str) -> bool:
        self.signaled_at[user] = self.last_step.get(user, 0)
        return super().signal(user, what)


@pytest.fixture(scope="module")
def site(tmp_path_factory, demo_bytes):
    app, services = make_site(tmp_path_factory.mktemp("webui-more"), demo_bytes)
    services.progress = PacedSteps()
    with ServerThread(app) as server:
        server.services = services
        yield server


def settled(page, requests, cards) -> int:
    """The cards shown once no request has gone out for 0.6 s (every page asked for is on the screen)."""
    seen = -1
    while seen != len(requests):
        seen = len(requests)
        page.wait_for_timeout(600)
    return cards.count()


def test_gallery_pages_through_hundreds_of_outputs_as_it_scrolls_loading_only_what_it_shows(page, site):
    store = site.services.store
    put_outputs(store, "bob", 300)  # picture k is k seconds newer than picture 0
    jpeg = "users/bob/outputs/img2img-images/2026-12-02/00300-7.jpg"  # the newest: infotext in EXIF
    store.put_bytes(jpeg, encode(Image.new("RGB", (8, 8), (40, 90, 200)),
                                 "a jpeg heron\nSteps: 1, Sampler: Euler, Seed: 7, Size: 8x8", FileFormat("jpg")))
    os.utime(store.root / jpeg, (1.7e9 + 1000, 1.7e9 + 1000))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    sign_in(page, site, "bob")
    page.click("#tabs [data-tab=gallery]")
    cards = page.locator("#tab-gallery figure.out")
    expect(cards.nth(23)).to_be_attached(timeout=SLOW)
    shown = settled(page, requests, cards)  # a screen that still shows the end of the grid asks for one more
    assert shown % 24 == 0 and shown < 300, shown
    expect(cards.nth(1).locator(".infotext")).to_contain_text("picture 299")  # read from the PNG by the page
    assert cards.nth(0).locator(".infotext").count() == 0  # a JPEG: its infotext is asked for when opened
    page.locator("#tab-gallery [data-action=more]").scroll_into_view_if_needed()
    expect(cards).to_have_count(shown + 24)
    expect(cards.nth(shown).locator(".infotext")).to_contain_text(f"picture {300 - shown}")  # newest first
    total = settled(page, requests, cards)
    assert len([u for u in requests if "/outputs?" in u]) == total // 24  # one listing a page
    assert len([u for u in requests if "/files/" in u]) == total < 301  # only the images shown are fetched
    cards.nth(0).locator("img").click()
    expect(page.locator(".lightbox .infotext")).to_contain_text("a jpeg heron")  # one image read by the server
    assert len([u for u in requests if "/outputs/infotext" in u]) == 1
    page.keyboard.press("ArrowRight")
    expect(page.locator(".lightbox .infotext")).to_contain_text("picture 299")
    assert len([u for u in requests if "/outputs/infotext" in u]) == 1


def test_skip_mid_run_ends_the_current_image_and_the_next_one_still_generates(page, site):
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab, steps=6, seed=9, prompt="two in a row")
    tab.locator("[data-field=n_iter]").fill("2")
    tab.locator("button.generate").click()
    expect(tab.locator(".progress-text")).to_contain_text(re.compile(r"Step [1-3]/12"), timeout=SLOW)
    tab.locator("[data-action=skip]").click()
    expect(tab.locator("figure.out.image, .err:not(:empty)").first).to_be_visible(timeout=SLOW)
    assert tab.locator(".err.general").inner_text() == ""
    expect(tab.locator("figure.out.image")).to_have_count(2)  # the skipped one comes back too
    at, ran = site.services.progress.signaled_at["alice"], site.services.progress.last_step["alice"]
    assert at < 6 and ran < 12, (at, ran)  # skipped during the first image, which stopped early
    assert 6 <= ran - at <= 8, (at, ran)  # ... within a step of the Skip; the second ran all of its 6
    texts = tab.locator("figure.out.image .infotext").all_inner_texts()
    assert ["Seed: 9," in texts[0], "Seed: 10," in texts[1]] == [True, True]


def test_hires_and_sampler_parameter_controls_reach_the_request_and_the_infotext(page, site):
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab, steps=2, seed=4, prompt="a lighthouse")
    tab.locator("[data-field=sampler_name]").select_option("Euler")
    tab.locator("[data-field=enable_hr]").check()
    tab.locator("details[data-group=hires] summary").click()
    tab.locator("[data-field=hr_scale]").fill("1.5")
    tab.locator("[data-field=hr_second_pass_steps]").fill("1")
    tab.locator("[data-field=hr_upscaler]").select_option("Latent (nearest)")
    tab.locator("[data-field=hr_sampler_name]").select_option("Euler a")
    tab.locator("[data-field=hr_scheduler]").select_option("Karras")
    tab.locator("[data-field=hr_prompt]").fill("a lighthouse, at dusk")
    tab.locator("[data-field=hr_negative_prompt]").fill("fog")
    tab.locator("details[data-group=sampler-params] summary").click()
    knobs = {"eta": 0.4, "s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 50, "s_noise": 0.9}
    for name, value in knobs.items():
        tab.locator(f"[data-field={name}]").fill(str(value))
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as sent:
        tab.locator("button.generate").click()
    body = sent.value.post_data_json
    assert (body["hr_sampler_name"], body["hr_scheduler"]) == ("Euler a", "Karras")
    assert (body["hr_prompt"], body["hr_negative_prompt"]) == ("a lighthouse, at dusk", "fog")
    assert {k: body[k] for k in knobs} == knobs
    figure = tab.locator("figure.out.image").first
    expect(figure).to_be_visible(timeout=SLOW)
    assert figure.locator("img").evaluate("img => img.naturalWidth") == 96
    text = figure.locator(".infotext")
    for part in ("Hires sampler: Euler a", "Hires schedule type: Karras", 'Hires prompt: "a lighthouse, at dusk"',
                 "Hires negative prompt: fog", "Eta: 0.4", "Sigma churn: 0.5", "Sigma tmin: 0.1", "Sigma tmax: 50",
                 "Sigma noise: 0.9"):
        expect(text).to_contain_text(part)
    # Unset, they are not sent: the user's settings apply
    for name in knobs:
        tab.locator(f"[data-field={name}]").fill("")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as again:
        tab.locator("button.generate").click()
    assert not set(knobs) & set(again.value.post_data_json)
    expect(tab.locator("figure.out.image .infotext").first).not_to_contain_text("Sigma churn", timeout=SLOW)
