"""The web page in headless Chromium (Debian's), driven by Playwright, against the app served by uvicorn.

What a person does: sign in, generate and watch the steps, see a bad size refused next to the field, send an
output to img2img and paint a mask, browse the gallery, manage files, expand a prompt, use a phone. The last
test writes screenshots of every tab to docs/screenshots/.
"""

from __future__ import annotations

import base64
import io
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi import Header, Request
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from functions.wiring import build_services
from handlers.generation.generate import execute_job
from handlers.http.api import create_app
from handlers.jobs import Job
from handlers.schemas import Txt2ImgRequest
from handlers.services import ProgressBoard
from handlers.settings import Settings
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, install_demo_controlnet
from loaders.demo.model import DEMO_NAME
from loaders.models.manager import KIND_DIRS, clean_model_name, list_models
from loaders.storage.store import LocalStore
from tests.browser_support import CHROMIUM_ARGS, ServerThread, ensure_chromium
from tests.conftest import TOKENS
from tests.tiny_models import PAIRS, put_folder, tiny_lm_dir

# Every run writes the screenshots to build/screenshots/ (ignored); EASEL_UPDATE_SCREENSHOTS=1 refreshes the
# committed copies in docs/screenshots/ that the README shows, so a plain test run leaves the tree clean.
_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = _ROOT / ("docs" if os.environ.get("EASEL_UPDATE_SCREENSHOTS") else "build") / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
SLOW = 60_000  # ms: a generation on 2 busy CPU cores


class SlowSteps(ProgressBoard):
    """A slower device: each denoising step takes at least 60 ms, so the page's polling sees the steps go by."""

    def __init__(self) -> None:
        super().__init__()
        self.last_step: dict[str, int] = {}  # the last step each user's generation ran (an interrupt stops it)

    def step(self, user: str, step: int) -> None:
        time.sleep(0.06)
        self.last_step[user] = step
        super().step(user, step)


def add_img2img_stand_in(app, services) -> None:
    """Until the real POST /sdapi/v1/img2img is on this branch: a stand-in that takes the A1111 body and
    generates as txt2img, so the page's img2img tab (init image, painted mask) can be driven."""
    if "/sdapi/v1/img2img" in app.openapi()["paths"]:
        return

    @app.post("/sdapi/v1/img2img")
    def img2img(body: dict, request: Request, authorization: str | None = Header(None)):
        who = services.tokens.authenticate(authorization)
        req = Txt2ImgRequest(**{k: v for k, v in body.items() if k in Txt2ImgRequest.model_fields})
        job = Job(user=who.user, mode="img2img", request=req, task_id=req.force_task_id or "img2img",
                  base_url=str(request.base_url))
        return execute_job(job, services)

    app.openapi_schema = None  # the page's feature list is read from the OpenAPI document


def add_lora_stand_ins(app, services) -> None:
    """Until the real routes are on this branch: GET /sdapi/v1/loras (A1111 shape) and POST /models/{kind}
    (raw body, ?name=, as the models API takes it), so the files tab and the LoRA picker can be driven."""
    paths = app.openapi()["paths"]
    if "/sdapi/v1/loras" not in paths:
        @app.get("/sdapi/v1/loras")
        def loras(authorization: str | None = Header(None)):
            who = services.tokens.authenticate(authorization)
            return [{"name": i.key.rsplit("/", 1)[-1].removesuffix(".safetensors"), "alias": "", "path": i.key}
                    for i in list_models(services.store, who.user, "lora")]

    if "/models/{kind}" not in paths:
        @app.post("/models/{kind}", status_code=201)
        async def upload(kind: str, name: str, request: Request, authorization: str | None = Header(None)):
            who = services.tokens.authenticate(authorization)
            key = f"users/{who.user}/{KIND_DIRS[kind]}/{clean_model_name(name, 'name')}"
            services.store.put_bytes(key, await request.body())
            return {"name": name, "kind": kind}

    app.openapi_schema = None


def make_site(tmp_path: Path, demo_bytes: bytes, stand_ins: bool = True, prompt_models: bool = True, **settings):
    store = LocalStore(tmp_path / "data")
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_bytes)
    if prompt_models:
        put_folder(store, "public/models/prompt/tiny-beautiful/", tiny_lm_dir())
    install_demo_controlnet(store)
    services = build_services(Settings(store=f"file://{tmp_path / 'data'}", cache_dir=tmp_path / "cache",
                                       tokens=",".join(f"{u}={t}" for u, t in TOKENS.items()), admins="root",
                                       **settings), store=store)
    services.progress = SlowSteps()
    app = create_app(services)
    if stand_ins:
        add_img2img_stand_in(app, services)
        add_lora_stand_ins(app, services)
    return app, services


@pytest.fixture(scope="module")
def site(tmp_path_factory, demo_bytes):
    app, services = make_site(tmp_path_factory.mktemp("webui"), demo_bytes)
    with ServerThread(app) as server:
        server.services = services
        yield server


@pytest.fixture(scope="module")
def browser():
    path = ensure_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def errors():
    return []


@pytest.fixture
def page(browser, errors):
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.on("pageerror", lambda e: errors.append(f"script error: {e}"))
    pg.on("console", lambda m: m.type == "error" and errors.append(m.text))
    yield pg
    context.close()
    # No broken script and no requests for routes the server lacks (a missing feature is hidden, not polled).
    assert not [e for e in errors if e.startswith("script error") or "404" in e], errors


def sign_in(page, site, user="alice"):
    page.goto(site.url + "/")
    page.fill("#token", TOKENS[user])
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#tab-txt2img")).to_be_visible()
    expect(page.locator("#tab-txt2img [data-field=sampler_name] option").first).to_be_attached()


def api(site, method, path, user="alice", **kw):
    r = httpx.request(method, site.url + path, headers={"Authorization": f"Bearer {TOKENS[user]}"}, timeout=120, **kw)
    assert r.status_code < 400, r.text
    return r.json()


def fill_small(tab, *, steps=2, seed=1, prompt="a cute dog"):
    tab.locator("[data-field=prompt]").fill(prompt)
    for name, value in (("width", 64), ("height", 64), ("steps", steps), ("seed", seed)):
        tab.locator(f"[data-field={name}]").fill(str(value))


def shown_if(locator, condition: bool) -> None:
    if condition:
        expect(locator).to_be_visible()
    else:
        expect(locator).to_be_hidden()


def png_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_sign_in_keeps_the_token_and_a_bad_token_is_refused(page, site):
    page.goto(site.url + "/")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#token", "not-a-token")
    page.click("#signin-form button[type=submit]")
    message = page.locator("#signin .field[data-for=token] .err")
    expect(message).to_have_text("the server did not accept the token, sign in again")  # one message, no TypeError
    sign_in(page, site, "root")
    expect(page.locator("#who-name")).to_contain_text("root")
    expect(page.locator("#who-name .role")).to_have_text("admin")
    assert page.evaluate("localStorage.getItem('easel.token')") == TOKENS["root"]
    page.reload()
    expect(page.locator("#tab-txt2img")).to_be_visible()  # still signed in
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("localStorage.getItem('easel.token')") is None


def test_generate_shows_step_progress_then_the_image_with_its_infotext(page, site):
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    expect(tab.locator("[data-field=checkpoint]")).to_have_value(re.compile(r"^easel-demo"))
    fill_small(tab, steps=12, seed=42)
    page.evaluate("""() => {
        window.seenSteps = [];
        const text = document.querySelector('#tab-txt2img .progress-text');
        new MutationObserver(() => window.seenSteps.push(text.textContent))
            .observe(text, {childList: true, characterData: true, subtree: true});
    }""")
    tab.locator("button.generate").click()
    figure = tab.locator("figure.out").first
    expect(figure).to_be_visible(timeout=SLOW)
    assert figure.locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    expect(figure.locator(".infotext")).to_contain_text("Seed: 42")
    expect(figure.locator(".infotext")).to_contain_text("Steps: 12")
    steps = [int(m.group(1)) for s in page.evaluate("window.seenSteps") if (m := re.match(r"Step (\d+)/12", s))]
    assert any(0 < k < 12 for k in steps), page.evaluate("window.seenSteps")
    assert steps == sorted(steps)  # progress only moves forward
    expect(tab.locator(".progress")).to_be_hidden()
    assert figure.locator("a", has_text="Download").get_attribute("href").startswith("data:image/png")


def test_a_bad_size_is_shown_next_to_the_width_field(page, site):
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab)
    tab.locator("[data-field=width]").fill("500")
    tab.locator("button.generate").click()
    err = tab.locator(".field[data-for=width] .err")
    expect(err).to_contain_text("multiple of 8")
    expect(err).to_contain_text("500")
    expect(tab.locator(".field[data-for=width]")).to_have_class(re.compile("invalid"))
    expect(tab.locator(".field[data-for=height] .err")).to_be_empty()
    tab.locator("[data-field=width]").fill("64")
    tab.locator("button.generate").click()  # fixed: the message goes away and the image comes
    expect(tab.locator("figure.out").first).to_be_visible(timeout=SLOW)
    expect(err).to_be_empty()


def test_a_controlnet_unit_is_sent_and_its_detected_map_shown(page, site, tmp_path):
    control = Image.new("RGB", (64, 64), "black")
    control.paste((255, 255, 255), (16, 16, 48, 48))
    control.save(tmp_path / "square.png")
    cn_model = DEMO_CONTROLNET_NAME.removesuffix(".safetensors")
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab, prompt="a white box")
    tab.locator(".controlnet > summary").click()
    unit_box = tab.locator(".cn-unit[data-unit='0']")
    unit_box.locator("[data-cn=module]").select_option("canny")
    # the preprocessor's own sliders, from module_detail: resolution and canny's two thresholds
    expect(unit_box.locator(".cn-sliders input")).to_have_count(3)
    expect(unit_box.locator("[data-cn=processor_res]")).to_have_value("512")  # canny's defaults
    expect(unit_box.locator("[data-cn=threshold_b]")).to_have_value("200")
    unit_box.locator("[data-cn=processor_res]").fill("64")  # the control image's own size: a crisp map
    unit_box.locator("[data-cn=threshold_a]").fill("50")
    unit_box.locator("[data-cn=model]").select_option(cn_model)
    unit_box.locator("[data-cn=file]").set_input_files(str(tmp_path / "square.png"))
    expect(unit_box.locator("[data-cn=enabled]")).to_be_checked()  # an image enables its unit
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as sent:
        tab.locator("button.generate").click()
    (unit,) = sent.value.post_data_json["alwayson_scripts"]["controlnet"]["args"]
    assert (unit["module"], unit["model"], unit["weight"], unit["enabled"]) == ("canny", cn_model, 1, True)
    assert (unit["processor_res"], unit["threshold_a"], unit["threshold_b"]) == (64, 50, 200)
    assert png_of(unit["image"]).size == (64, 64)
    detected = tab.locator("figure.out", has_text="ControlNet map")
    expect(detected).to_be_visible(timeout=SLOW)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=detected.locator("img").element_handle())
    edges = detected.locator("img").evaluate("""img => { const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight; const x = c.getContext('2d'); x.drawImage(img, 0, 0);
        const d = x.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return [c.width * c.height, n]; }""")
    assert 0 < edges[1] < edges[0] / 4, edges  # canny found the square's outline: neither a blank nor a filled map


def test_send_to_img2img_then_paint_a_mask_and_inpaint(page, site):
    sign_in(page, site)
    t2i, i2i = page.locator("#tab-txt2img"), page.locator("#tab-img2img")
    fill_small(t2i, prompt="a red barn")
    t2i.locator("button.generate").click()
    t2i.locator("figure.out button", has_text="Send to img2img").click(timeout=SLOW)
    expect(i2i).to_be_visible()
    expect(i2i.locator("[data-field=prompt]")).to_have_value("a red barn")
    expect(i2i.locator(".canvas-wrap")).to_be_visible()
    assert i2i.locator("[data-field=width]").input_value() == "64"
    i2i.locator("[data-field=paint_mask]").check()
    box = i2i.locator(".mask-canvas").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    i2i.locator("[data-field=steps]").fill("2")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/img2img")) as sent:
        i2i.locator("button.generate").click()
    body = sent.value.post_data_json
    init, mask = png_of(body["init_images"][0]), png_of(body["mask"]).convert("L")
    assert init.size == mask.size == (64, 64)
    assert mask.getpixel((10, 32)) == 255 and mask.getpixel((60, 5)) == 0  # painted stroke vs untouched corner
    assert body["denoising_strength"] == 0.75 and body["prompt"] == "a red barn"
    expect(i2i.locator("figure.out").first).to_be_visible(timeout=SLOW)


def test_gallery_shows_own_outputs_newest_first_with_infotext_and_download(page, site):
    for prompt in ("older gallery picture", "newest gallery picture"):
        api(site, "POST", "/sdapi/v1/txt2img", user="bob", json={"prompt": prompt, "width": 64, "height": 64, "steps": 2})
    sign_in(page, site, "bob")
    page.click("#tabs [data-tab=gallery]")
    cards = page.locator("#tab-gallery figure.out")
    expect(cards.first.locator(".infotext")).to_contain_text("newest gallery picture")
    expect(cards.nth(1).locator(".infotext")).to_contain_text("older gallery picture")
    expect(cards.first.locator("img")).to_have_js_property("naturalWidth", 64)
    assert cards.first.locator("a", has_text="Download").get_attribute("href").startswith("blob:")
    assert "alice" not in page.locator("#tab-gallery").inner_text()


def test_files_tab_browses_and_deletes_own_outputs(page, site):
    api(site, "POST", "/sdapi/v1/txt2img", user="root", json={"prompt": "file to delete", "width": 64, "height": 64,
                                                              "steps": 2})
    sign_in(page, site, "root")
    page.click("#tabs [data-tab=files]")
    files = page.locator("#tab-files")
    for folder in ("outputs", "txt2img-images"):
        files.locator(f"tr[data-folder='{folder}'] button").click()
    expect(files.locator(".crumbs")).to_contain_text("txt2img-images")  # that folder's listing is shown
    files.locator("tr[data-folder] button").first.click()  # the day folder
    row = files.locator("tr[data-file]")
    expect(row).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    row.locator("button", has_text="Delete").click()
    expect(files.locator("td.empty")).to_have_text("empty folder")
    assert api(site, "GET", "/outputs", user="root")["items"] == []
    files.locator("[data-root=public]").click()
    expect(files.locator("[data-root=public]")).to_have_attribute("aria-pressed", "true")  # public listing shown
    files.locator("tr[data-folder='models'] button").click()
    files.locator("tr[data-folder='Stable-diffusion'] button").click()
    expect(files.locator(f"tr[data-file='{DEMO_NAME}']")).to_be_visible()


def test_upload_a_lora_in_files_then_pick_it_in_txt2img(page, site, tmp_path):
    import torch
    from safetensors.torch import save_file

    lora = tmp_path / "paper-cut.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}, str(lora))
    sign_in(page, site, "alice")
    expect(page.locator("#tab-txt2img .lora-picker [data-field=lora]")).not_to_contain_text("paper-cut")
    page.click("#tabs [data-tab=files]")
    form = page.locator("#tab-files form.upload")
    form.locator("[data-field=kind]").select_option("lora")
    form.locator("[data-field=file]").set_input_files(str(lora))
    form.locator("button[type=submit]").click()
    expect(form.locator(".ok")).to_contain_text("Uploaded paper-cut.safetensors", timeout=SLOW)
    expect(form.locator(".pct")).to_have_text("100%")
    page.locator("#tab-files [data-root=me]").click()
    for folder in ("models", "Lora"):
        page.locator(f"#tab-files tr[data-folder='{folder}'] button").click()
    expect(page.locator("#tab-files tr[data-file='paper-cut.safetensors']")).to_be_visible()
    page.click("#tabs [data-tab=txt2img]")
    tab = page.locator("#tab-txt2img")
    tab.locator("[data-field=lora]").select_option("paper-cut")
    tab.locator("[data-field=prompt]").fill("a fox")
    tab.locator("[data-action=insert-lora]").click()
    expect(tab.locator("[data-field=prompt]")).to_have_value("a fox, <lora:paper-cut:1>")
    assert [m["name"] for m in api(site, "GET", "/sdapi/v1/loras", user="bob")] == []  # alice's alone
    page.click("#tabs [data-tab=files]")  # and delete it again: gone from the folder and the picker
    page.once("dialog", lambda d: d.accept())
    with page.expect_request(lambda r: r.method == "DELETE") as deleted:
        page.locator("#tab-files tr[data-file='paper-cut.safetensors'] button", has_text="Delete").click()
    if page.evaluate("window.easelApp.features.upload"):  # a model goes through the models API when it exists
        assert deleted.value.url.endswith("/models/lora/paper-cut.safetensors")
    expect(page.locator("#tab-files tr[data-file='paper-cut.safetensors']")).to_have_count(0)
    page.click("#tabs [data-tab=txt2img]")
    expect(tab.locator("[data-field=lora]")).not_to_contain_text("paper-cut")


def test_public_files_have_no_delete_button_for_users(page, site):
    sign_in(page, site, "alice")
    page.click("#tabs [data-tab=files]")
    files = page.locator("#tab-files")
    files.locator("[data-root=public]").click()
    expect(files.locator("[data-root=public]")).to_have_attribute("aria-pressed", "true")  # public listing shown
    files.locator("tr[data-folder='models'] button").click()
    files.locator("tr[data-folder='Stable-diffusion'] button").click()
    row = files.locator(f"tr[data-file='{DEMO_NAME}']")
    expect(row.locator("button", has_text="Download")).to_be_visible()
    expect(row.locator("button", has_text="Delete")).to_have_count(0)


def test_prompt_tab_expands_a_short_prompt_and_sends_it_to_txt2img(page, site):
    sign_in(page, site)
    page.click("#tabs [data-tab=prompt]")
    form = page.locator("#tab-prompt form")
    expect(form.locator("[data-field=model]")).to_have_value("tiny-beautiful")
    form.locator("[data-field=prompt]").fill("cute dog")
    form.locator("button[type=submit]").click()
    expect(form.locator("[data-field=result]")).to_have_value(PAIRS["cute dog"], timeout=SLOW)
    form.locator("[data-action=to-txt2img]").click()
    expect(page.locator("#tab-txt2img")).to_be_visible()
    expect(page.locator("#tab-txt2img [data-field=prompt]")).to_have_value(PAIRS["cute dog"])


def test_prompt_errors_appear_next_to_the_field(page, site):
    sign_in(page, site)
    page.click("#tabs [data-tab=prompt]")
    form = page.locator("#tab-prompt form")
    form.locator("[data-field=prompt]").fill("dog")
    form.locator("[data-field=max_new_tokens]").fill("5000")
    form.locator("button[type=submit]").click()
    expect(form.locator(".field[data-for=max_new_tokens] .err")).to_contain_text("384")


def test_hidden_tabs_setting_hides_them_and_missing_routes_hide_their_controls(browser, tmp_path, demo_bytes, errors):
    app, _ = make_site(tmp_path, demo_bytes, stand_ins=False, hide_tabs="gallery,prompt")
    with ServerThread(app) as server:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        sign_in(page, server)
        for name in ("gallery", "prompt"):
            expect(page.locator(f"#tabs [data-tab={name}]")).to_be_hidden()
        page.goto(server.url + "/#prompt")
        expect(page.locator("#tab-txt2img")).to_be_visible()
        expect(page.locator("#tab-prompt")).to_be_hidden()
        features = page.evaluate("window.easelApp.features")
        tab = page.locator("#tab-txt2img")
        for control, feature in ((".lora-picker", "loras"), (".field[data-for=vae]", "vae"), (".controlnet", "controlnet")):
            shown_if(tab.locator(control), features[feature])
        shown_if(page.locator("#tabs [data-tab=img2img]"), features["img2img"])
        page.click("#tabs [data-tab=files]")
        notice = page.locator("#tab-files form.upload .unavailable")
        if features["upload"]:
            expect(notice).to_be_hidden()
        else:
            expect(notice).to_contain_text("Uploads are not available")
            expect(page.locator("#tab-files form.upload button[type=submit]")).to_be_disabled()
        context.close()
    assert not [e for e in errors if "404" in e], errors


def test_every_tab_fits_a_phone_screen(browser, site, errors):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    sign_in(page, site)
    for name in ("txt2img", "img2img", "queue", "gallery", "extras", "pnginfo", "files", "prompt"):
        page.locator(f"#tabs [data-tab={name}]").click()
        expect(page.locator(f"#tab-{name}")).to_be_visible()
        page.wait_for_timeout(150)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the {name} tab scrolls sideways by {overflow}px on a phone"
    context.close()


def test_zz_screenshots_of_every_tab(browser, site):
    """Runs last: the tabs as a person sees them, at 1280 px and at phone width (docs/screenshots/)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    api(site, "POST", "/sdapi/v1/txt2img", json={"prompt": "a lighthouse at dusk, watercolor", "width": 64,
                                                 "height": 64, "steps": 2, "seed": 11, "batch_size": 2})
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(site.url + "/")
    shoot_both(page, "signin")
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab, steps=3, seed=7, prompt="a cute dog, watercolor")
    tab.locator("[data-field=batch_size]").fill("2")
    tab.locator("[data-field=enable_hr]").check()  # the groups as a person opens them
    tab.locator("details[data-group=hires] summary").click()
    tab.locator("[data-field=enable_hr]").uncheck()
    tab.locator("details[data-group=sampler-params] summary").click()
    tab.locator("button.generate").click()
    expect(tab.locator("figure.out").nth(1)).to_be_visible(timeout=SLOW)  # two images, no grid (A1111's rule)
    expect(tab.locator("figure.out.grid")).to_have_count(0)
    if page.evaluate("window.easelApp.features.controlnet"):
        tab.locator(".controlnet > summary").click()  # show the unit's controls too
    shoot_both(page, "txt2img")
    tab.locator("figure.out button", has_text="Send to img2img").first.click()
    i2i = page.locator("#tab-img2img")
    expect(i2i.locator(".canvas-wrap")).to_be_visible()
    i2i.locator("[data-field=paint_mask]").check()
    box = i2i.locator(".mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * .3, box["y"] + box["height"] * .3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * .6, box["y"] + box["height"] * .55, steps=4)
    page.mouse.up()
    shoot_both(page, "img2img")
    page.click("#tabs [data-tab=queue]")
    expect(page.locator("#tab-queue details.task").first).to_be_visible()
    page.locator("#tab-queue details.task summary").first.click()
    shoot_both(page, "queue")
    page.click("#tabs [data-tab=gallery]")
    expect(page.locator("#tab-gallery figure.out img").first).to_have_js_property("complete", True)
    shoot_both(page, "gallery")
    page.locator("#tab-gallery figure.out img").first.click()
    expect(page.locator(".lightbox .infotext")).to_be_visible()
    shoot_both(page, "lightbox")
    page.keyboard.press("Escape")
    newest = api(site, "GET", "/outputs?limit=1")["items"][0]["key"]
    png = base64.b64encode(httpx.get(f"{site.url}/files/{newest}", headers={"Authorization": f"Bearer {TOKENS['alice']}"}).content).decode()
    page.click("#tabs [data-tab=pnginfo]")
    paste_png(page, png)
    expect(page.locator("#tab-pnginfo .png-info .infotext")).to_contain_text("Seed:")
    shoot_both(page, "pnginfo")
    if page.evaluate("window.easelApp.features.extras"):
        page.click("#tabs [data-tab=extras]")
        paste_png(page, png)
        page.locator("#tab-extras [data-field=upscaler_1]").select_option("Lanczos")
        page.locator("#tab-extras button[type=submit]").click()
        expect(page.locator("#tab-extras .extras-result img")).to_be_visible(timeout=SLOW)
        shoot_both(page, "extras")
    page.click("#tabs [data-tab=files]")
    page.locator("#tab-files [data-root=public]").click()
    expect(page.locator("#tab-files [data-root=public]")).to_have_attribute("aria-pressed", "true")
    page.locator("#tab-files tr[data-folder='models'] button").click()
    expect(page.locator("#tab-files tr[data-folder='prompt']")).to_be_visible()
    shoot_both(page, "files")
    page.click("#tabs [data-tab=prompt]")
    form = page.locator("#tab-prompt form")
    form.locator("[data-field=prompt]").fill("old castle")
    form.locator("button[type=submit]").click()
    expect(form.locator("[data-field=result]")).to_have_value(PAIRS["old castle"], timeout=SLOW)
    shoot_both(page, "prompt")
    context.close()


def paste_png(page, b64: str) -> None:
    """Paste a PNG into the page, as Ctrl+V with an image on the clipboard does."""
    page.evaluate("""(b64) => { const dt = new DataTransfer(); const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        dt.items.add(new File([bytes], 'out.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt})); }""", b64)


def shoot_both(page, name: str) -> None:
    """The same page at 1280 px and at phone width."""
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.wait_for_timeout(100)  # one layout pass
        shoot(page, f"{name}-{label}")
    page.set_viewport_size(DESKTOP)


def shoot(page, name: str) -> None:
    """A full-page PNG, reduced to 256 colours so the committed files stay small."""
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header at the top, where a person sees it
    png = page.screenshot(full_page=True)
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    img.save(SCREENSHOTS / f"{name}.png", optimize=True)
