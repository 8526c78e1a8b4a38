"""The web page's A1111-style features in headless Chromium against the app served by uvicorn (issue 17):
live preview and Interrupt, a queued second task in the Queue tab, the field groups the API honours, seed
buttons, Ctrl+Enter, drag-and-drop and paste, the gallery lightbox, PNG Info, errors and phone layout."""

from __future__ import annotations

import base64
import io
import re
import time

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser_support import ServerThread
from tests.test_webui_browser import (DESKTOP, PHONE, SLOW, api, browser, errors, fill_small, make_site, page,  # noqa: F401
                                      sign_in, site)

assert browser and errors and page and site  # fixtures, used by name


def png_b64(prompt="a tiny barn", seed=3) -> str:
    img = Image.new("RGB", (64, 64), (200, 40, 40))
    buf = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    meta.add_text("parameters", f"{prompt}\nNegative prompt: fog\nSteps: 3, Sampler: Euler, CFG scale: 6, "
                                f"Seed: {seed}, Size: 64x64, Clip skip: 2")
    img.save(buf, "PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def file_transfer(page, b64: str, name="in.png"):
    """A DataTransfer holding one PNG, as a drop or a paste carries it."""
    return page.evaluate_handle("""([b64, name]) => { const dt = new DataTransfer();
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        dt.items.add(new File([bytes], name, {type: 'image/png'})); return dt; }""", [b64, name])


def test_live_preview_then_interrupt_returns_the_image_early(page, site):
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab, steps=40, seed=5)
    tab.locator("[data-field=preview_every]").fill("2")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as sent:
        tab.locator("button.generate").click()
    assert sent.value.post_data_json["override_settings"]["show_progress_every_n_steps"] == 2
    preview = tab.locator(".live-preview img")
    expect(preview).to_be_visible(timeout=SLOW)  # a decoded preview of the running image
    assert preview.evaluate("img => img.src").startswith("data:image/png;base64,")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=preview.element_handle())
    tab.locator("[data-action=interrupt]").click()
    expect(tab.locator("figure.out.image")).to_be_visible(timeout=SLOW)  # the image made so far comes back
    assert site.services.progress.last_step["alice"] < 30  # the remaining steps did not run
    expect(tab.locator("[data-action=interrupt]")).to_be_hidden()
    expect(tab.locator(".live-preview")).to_be_hidden()


def test_generate_while_running_queues_a_second_task_shown_in_the_queue_tab(page, site):
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab, steps=25, seed=8, prompt="first in line")
    tab.locator("button.generate").click()
    expect(tab.locator(".progress-text")).to_contain_text("Step", timeout=SLOW)  # the first is running
    tab.locator("[data-field=prompt]").fill("second in line")
    tab.locator("[data-field=steps]").fill("2")
    with page.expect_request(lambda r: "/sdapi/v1/txt2img?task_id=" in r.url) as queued:
        tab.locator("button.generate").click()
    task_id = queued.value.url.split("task_id=")[1]
    expect(tab.locator(".queued-note")).to_contain_text(task_id)
    expect(tab.locator("figure.out.image")).to_be_visible(timeout=SLOW)  # the first one's result
    page.click("#tabs [data-tab=queue]")
    row = page.locator(f"#tab-queue details.task[data-task='{task_id}']")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=SLOW)
    row.locator("summary").click()
    expect(row.locator("figure.out.image .infotext")).to_contain_text("second in line")
    before = page.locator("#tab-queue details.task").count()
    row.locator("button", has_text="Re-run").click()
    expect(page.locator("#tab-queue details.task")).to_have_count(before + 1)
    newest = page.locator("#tab-queue details.task").first
    expect(newest).to_have_attribute("data-status", "succeeded", timeout=SLOW)
    newest.locator("summary").click()
    expect(newest.locator("figure.out.image .infotext")).to_contain_text("second in line")


def test_a_queued_task_can_be_canceled(page, site):
    sign_in(page, site)
    ids = []
    for k in range(3):  # the executor runs one at a time per user: the last waits its turn
        ids.append(api(site, "POST", f"/sdapi/v1/txt2img?task_id=cancel-me-{k}-{time.time_ns()}",
                       json={"prompt": "slow", "width": 64, "height": 64, "steps": 20})["task_id"])
    page.click("#tabs [data-tab=queue]")
    row = page.locator(f"#tab-queue details.task[data-task='{ids[-1]}']")
    expect(row).to_have_attribute("data-status", re.compile("queued|running"))
    row.locator("button", has_text="Cancel").click()
    expect(row).to_have_attribute("data-status", "canceled", timeout=SLOW)
    assert api(site, "GET", f"/tasks/{ids[-1]}")["status"] == "canceled"
    for earlier in ids[:-1]:  # the others ran: a cancel touches only its own task
        expect(page.locator(f"#tab-queue details.task[data-task='{earlier}']")).to_have_attribute(
            "data-status", "succeeded", timeout=SLOW)


def test_hires_variation_clip_skip_schedule_and_styles_are_sent_and_honoured(page, site):
    api(site, "POST", "/sdapi/v1/prompt-styles", json={"name": "ink", "prompt": "{prompt}, ink drawing",
                                                         "negative_prompt": ""})
    sign_in(page, site)
    tab = page.locator("#tab-txt2img")
    fill_small(tab, seed=21, prompt="a heron")
    tab.locator("[data-field=styles]").select_option("ink")
    tab.locator("[data-field=scheduler]").select_option("Karras")
    tab.locator("[data-field=clip_skip]").fill("2")
    tab.locator("[data-field=enable_hr]").check()
    tab.locator("details[data-group=hires] summary").click()
    tab.locator("[data-field=hr_second_pass_steps]").fill("1")
    tab.locator("[data-field=hr_upscaler]").select_option("Latent (nearest)")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as sent:
        tab.locator("[data-field=prompt]").press("Control+Enter")  # A1111's shortcut
    body = sent.value.post_data_json
    assert body["styles"] == ["ink"] and body["scheduler"] == "Karras"
    assert (body["enable_hr"], body["hr_scale"], body["hr_second_pass_steps"], body["denoising_strength"]) == (True, 2, 1, 0.7)
    assert "subseed_strength" not in body  # the variation group is off
    assert body["override_settings"]["CLIP_stop_at_last_layers"] == 2
    assert "refiner_checkpoint" not in body and "init_images" not in body  # switched-off group, other mode
    figure = tab.locator("figure.out.image").first
    expect(tab.locator("figure.out.image, .err:not(:empty)").first).to_be_visible(timeout=SLOW)
    assert [e for e in tab.locator(".err").all_inner_texts() if e.strip()] == []
    assert tab.locator(".err.general").inner_text() == ""
    assert figure.locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 128]
    text = figure.locator(".infotext")
    for part in ("a heron, ink drawing", "Clip skip: 2", "Schedule type: Karras", "Hires upscale: 2"):
        expect(text).to_contain_text(part)


def test_seed_buttons_variation_seed_and_the_checkpoint_picker_sets_the_users_option(page, site):
    sign_in(page, site, "bob")
    tab = page.locator("#tab-txt2img")
    fill_small(tab, seed=-1)
    tab.locator("[data-field=variation_on]").check()
    tab.locator("details[data-group=variation] summary").click()
    tab.locator("[data-field=subseed]").fill("77")
    tab.locator("[data-field=subseed_strength]").fill("0.3")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as sent:
        tab.locator("button.generate").click()
    assert (sent.value.post_data_json["subseed"], sent.value.post_data_json["subseed_strength"]) == (77, 0.3)
    figure = tab.locator("figure.out.image").first
    expect(figure).to_be_visible(timeout=SLOW)
    expect(figure.locator(".infotext")).to_contain_text("Variation seed: 77, Variation seed strength: 0.3")
    seed = re.search(r"Seed: (\d+)", figure.locator(".infotext").inner_text()).group(1)
    tab.locator("[data-action=seed-reuse]").click()
    expect(tab.locator("[data-field=seed]")).to_have_value(seed)
    tab.locator("[data-action=seed-random]").click()
    expect(tab.locator("[data-field=seed]")).to_have_value("-1")
    title = tab.locator("[data-field=checkpoint]").input_value()
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/options") and r.method == "POST") as posted:
        tab.locator("[data-field=checkpoint]").select_option(title)
    assert posted.value.post_data_json == {"sd_model_checkpoint": title}
    page.wait_for_timeout(200)
    assert title.startswith(api(site, "GET", "/sdapi/v1/options", user="bob")["sd_model_checkpoint"])


def test_drop_an_image_into_img2img_and_inpaint_defaults_to_whole_picture(page, site):
    sign_in(page, site)
    page.click("#tabs [data-tab=img2img]")
    i2i = page.locator("#tab-img2img")
    i2i.locator(".img2img-only").dispatch_event("drop", {"dataTransfer": file_transfer(page, png_b64())})
    expect(i2i.locator(".canvas-wrap")).to_be_visible()
    expect(i2i.locator("[data-field=inpaint_full_res]")).to_have_value("false")  # "Whole picture", as A1111
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    i2i.locator(".field[data-for=mask]").dispatch_event(
        "drop", {"dataTransfer": file_transfer(page, base64.b64encode(buf.getvalue()).decode(), "mask.png")})
    fill_small(i2i, prompt="a barn at night")
    i2i.locator("[data-field=width]").fill("128")  # Whole picture: the output has the asked size
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/img2img")) as sent:
        i2i.locator("button.generate").click()
    body = sent.value.post_data_json
    assert (body["inpaint_full_res"], body["inpainting_fill"], body["mask_blur"]) == (False, 1, 4)
    assert Image.open(io.BytesIO(base64.b64decode(body["mask"]))).size == (64, 64)
    figure = i2i.locator("figure.out.image").first
    expect(figure).to_be_visible(timeout=SLOW)
    assert figure.locator("img").evaluate("img => img.naturalWidth") == 128


def test_png_info_reads_a_pasted_image_and_sends_its_parameters_to_txt2img(page, site):
    sign_in(page, site)
    page.click("#tabs [data-tab=pnginfo]")
    tab = page.locator("#tab-pnginfo")
    page.evaluate("dt => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}))",
                  file_transfer(page, png_b64("a lone pine", seed=1234)))
    expect(tab.locator(".png-info .infotext")).to_contain_text("Seed: 1234")
    tab.locator("[data-action=to-txt2img]").click()
    t2i = page.locator("#tab-txt2img")
    expect(t2i).to_be_visible()
    expect(t2i.locator("[data-field=prompt]")).to_have_value("a lone pine")
    expect(t2i.locator("[data-field=negative_prompt]")).to_have_value("fog")
    for name, value in (("seed", "1234"), ("steps", "3"), ("cfg_scale", "6"), ("clip_skip", "2"), ("sampler_name", "Euler")):
        expect(t2i.locator(f"[data-field={name}]")).to_have_value(value)
    page.click("#tabs [data-tab=pnginfo]")
    tab.locator("[data-field=png_file]").set_input_files(files=[{"name": "x.png", "mimeType": "image/png",
                                                               "buffer": b"not a png"}])
    expect(tab.locator(".field[data-for=image] .err")).to_contain_text("not a readable image")


def test_gallery_lightbox_keys_copy_send_and_delete(page, site):
    for prompt in ("lightbox first", "lightbox second"):
        api(site, "POST", "/sdapi/v1/txt2img", user="root", json={"prompt": prompt, "width": 64, "height": 64,
                                                                   "steps": 1, "seed": 4})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, site, "root")
    page.click("#tabs [data-tab=gallery]")
    page.locator("#tab-gallery figure.out img").first.click()
    box = page.locator(".lightbox")
    expect(box.locator(".infotext")).to_contain_text("lightbox second")
    page.keyboard.press("ArrowRight")
    expect(box.locator(".infotext")).to_contain_text("lightbox first")
    page.keyboard.press("ArrowLeft")
    box.locator("button", has_text="Copy parameters").click()
    expect(box.locator(".ok")).to_have_text("Parameters copied.")
    assert page.evaluate("navigator.clipboard.readText()").startswith("lightbox second")
    page.once("dialog", lambda d: d.accept())
    page.keyboard.press("Delete")
    expect(box.locator(".infotext")).to_contain_text("lightbox first")  # the next one is shown
    expect(page.locator("#tab-gallery figure.out")).to_have_count(1)
    left = api(site, "GET", "/outputs", user="root")["items"]
    assert [api(site, "GET", f"/outputs/infotext?key={i['key']}", user="root")["infotext"].split("\n")[0]
            for i in left] == ["lightbox first"]
    box.locator("button", has_text="Send to txt2img").click()
    expect(page.locator("#tab-txt2img [data-field=prompt]")).to_have_value("lightbox first")
    expect(page.locator("#tab-txt2img [data-field=seed]")).to_have_value("4")
    expect(box).to_be_hidden()
    page.click("#tabs [data-tab=gallery]")
    page.locator("#tab-gallery figure.out img").first.click()
    box.locator("button", has_text="Send to extras").click()
    expect(page.locator("#tab-extras .extras-input img")).to_have_js_property("naturalWidth", 64)


def test_admins_are_told_why_the_prompt_tab_is_hidden(browser, tmp_path, demo_bytes, errors):
    app, _ = make_site(tmp_path, demo_bytes, prompt_models=False)
    with ServerThread(app) as server:
        context = browser.new_context(viewport=DESKTOP)
        pg = context.new_page()
        pg.on("pageerror", lambda e: errors.append(f"script error: {e}"))
        sign_in(pg, server, "root")
        expect(pg.locator("#tabs [data-tab=prompt]")).to_be_hidden()
        expect(pg.locator("#admin-hints")).to_contain_text("public/models/prompt/")
        pg.click("#sign-out")
        sign_in(pg, server, "alice")
        expect(pg.locator("#tabs [data-tab=prompt]")).to_be_hidden()
        expect(pg.locator("#admin-hints")).to_be_hidden()  # a user cannot add public models
        context.close()
    assert not [e for e in errors if e.startswith("script error")], errors


def test_on_a_phone_generate_stays_in_reach_and_the_result_is_scrolled_into_view(browser, site, errors):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.on("pageerror", lambda e: errors.append(f"script error: {e}"))
    sign_in(pg, site)
    tab = pg.locator("#tab-txt2img")
    fill_small(tab, steps=2)
    tab.locator("[data-field=prompt]").evaluate("n => window.scrollTo(0, 0)")
    button = tab.locator("button.generate")
    box = button.bounding_box()
    assert box["y"] + box["height"] <= PHONE["height"], box  # sticky at the bottom of the screen
    button.click()
    figure = tab.locator("figure.out.image").first
    expect(figure).to_be_visible(timeout=SLOW)
    pg.wait_for_timeout(200)
    top = tab.locator(".results").evaluate("n => n.getBoundingClientRect().top")
    assert 0 <= top < PHONE["height"] / 2, top  # the results, not the form, are on screen
    context.close()
    assert not [e for e in errors if e.startswith("script error")], errors


def test_extras_upscales_a_dropped_image(page, site):
    sign_in(page, site)
    page.click("#tabs [data-tab=extras]")
    tab = page.locator("#tab-extras")
    tab.locator(".drop-zone").dispatch_event("drop", {"dataTransfer": file_transfer(page, png_b64())})
    expect(tab.locator(".extras-input img")).to_be_visible()
    tab.locator("[data-field=upscaler_1]").select_option("Lanczos")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/extra-single-image")) as sent:
        tab.locator("button[type=submit]").click()
    body = sent.value.post_data_json
    assert (body["upscaler_1"], body["upscaling_resize"]) == ("Lanczos", 2)
    assert "gfpgan_visibility" not in body  # no face restorer installed: no control for it
    result = tab.locator(".extras-result figure img")
    expect(result).to_be_visible(timeout=SLOW)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=result.element_handle())
    assert result.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 128]


def test_a_script_from_the_dropdown_runs_with_its_own_arguments(page, site):
    sign_in(page, site, "bob")
    tab = page.locator("#tab-txt2img")
    fill_small(tab, steps=1, seed=9, prompt="a cat|red")
    tab.locator(".script-group > summary").click()
    tab.locator("[data-field=script_name]").select_option("prompt matrix")
    args = tab.locator(".script-args [data-script-arg]")
    expect(args).to_have_count(5)  # script-info's arguments for prompt matrix, in order
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as sent:
        tab.locator("button.generate").click()
    body = sent.value.post_data_json
    assert body["script_name"] == "prompt matrix"
    assert body["script_args"] == [False, False, "positive", "comma", 0]
    images = tab.locator("figure.out.image")
    expect(images).to_have_count(2, timeout=SLOW)  # "a cat" and "a cat, red"
    expect(images.nth(1).locator(".infotext")).to_contain_text("a cat, red")
