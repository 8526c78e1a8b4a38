"""Every control on the web page maps to a field the server honours today (issue 17): each `data-api` of the
generation form is a field of the request model of the tabs it shows in (or an option the user's settings
honour), and each of its preset values, defaults and bounds validates there; the same for the Extras form and
the ControlNet unit controls. A control the server would refuse or ignore fails here by name."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydantic import ValidationError

from handlers.accounts.a1111_options import HONOURED
from handlers.generation import fidelity
from handlers.generation.controlnet_units import ControlNetUnit
from handlers.generation.extras import ExtrasSingleImageRequest
from handlers.generation.refiner import load_refiner
from handlers.jobs import Job
from handlers.http.listing import samplers, schedulers
from handlers.schemas import IMAGE_UPSCALERS, LATENT_UPSCALERS, Img2ImgRequest, Txt2ImgRequest
from loaders.errors import InvalidRequest

PAGE = Path(__file__).resolve().parent.parent / "handlers/http/static/index.html"
VOID = {"input", "br", "img", "meta", "link", "hr", "source"}
# The selects the page fills from the server's lists (lists.js): every entry those lists give.
SAMPLER_NAMES = [s["name"] for s in samplers()]
SCHEDULE_LABELS = [s["label"] for s in schedulers()]
FILLED = {"sampler_name": SAMPLER_NAMES, "scheduler": SCHEDULE_LABELS,
          "hr_sampler_name": ["Use same sampler", *SAMPLER_NAMES], "hr_scheduler": ["Use same scheduler", *SCHEDULE_LABELS],
          "hr_upscaler": [*LATENT_UPSCALERS, *IMAGE_UPSCALERS], "refiner_checkpoint": ["None", "some-sdxl-model"],
          "styles": [["some-style"]]}


class Controls(HTMLParser):
    """Each control with data-api / data-cn: its attributes, its <option> values and the classes above it."""

    def __init__(self):
        super().__init__()
        self.stack: list[dict] = []
        self.found: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        node = {"tag": tag, "attrs": a, "options": [], "classes": set((a.get("class") or "").split()),
                "id": a.get("id")}
        if tag == "option" and self.stack and self.stack[-1]["tag"] == "select":
            self.stack[-1]["options"].append(a.get("value"))
        if "data-api" in a or "data-cn" in a:
            node["above"] = set().union(*(n["classes"] for n in self.stack)) if self.stack else set()
            node["where"] = next((n["id"] for n in reversed(self.stack) if n["id"]), None)
            self.found.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break


def controls() -> list[dict]:
    parser = Controls()
    parser.feed(PAGE.read_text())
    return parser.found


def values_of(c: dict) -> list:
    """What the page can send for a control: its options, its default and its bounds, as the form reads them."""
    a, kind = c["attrs"], c["attrs"].get("data-kind")
    if a.get("data-api") in FILLED:
        return FILLED[a["data-api"]]
    if a.get("type") == "checkbox":
        return [True, False]
    raw = [v for v in c["options"] if v not in (None, "")] if c["tag"] == "select" else \
        [a[k] for k in ("value", "min", "max") if a.get(k) not in (None, "")]
    if kind == "bool":
        return [v == "true" for v in raw]
    if kind == "int":
        return [int(v) for v in raw]
    if a.get("type") == "number":
        return [float(v) for v in raw]
    return raw


def generation_models(c: dict) -> list[type]:
    if "txt2img-only" in c["above"]:
        return [Txt2ImgRequest]
    if "img2img-only" in c["above"] or "inpaint-only" in c["above"]:
        return [Img2ImgRequest]
    return [Txt2ImgRequest, Img2ImgRequest]


def generation_controls() -> list[dict]:
    return [c for c in controls() if "data-api" in c["attrs"] and c["where"] == "gen-template"]


@pytest.mark.parametrize("control", generation_controls(), ids=lambda c: c["attrs"]["data-api"])
def test_each_generation_control_is_a_field_the_server_honours_with_values_it_accepts(control):
    name = control["attrs"]["data-api"]
    if name.startswith("override_settings."):
        assert name.split(".", 1)[1] in HONOURED, f"{name}: an option the server does not honour"
        return
    for model in generation_models(control):
        assert name in model.model_fields, f"{name}: not a field of {model.__name__}"
        for value in values_of(control):
            try:
                model(prompt="x", **{name: value})
            except ValidationError as e:
                pytest.fail(f"{name}={value!r} (a value the page sends) is refused by {model.__name__}: {e}")


@pytest.mark.parametrize("control", [c for c in generation_controls() if Img2ImgRequest in generation_models(c)
                                     and not c["attrs"]["data-api"].startswith("override_settings.")],
                         ids=lambda c: c["attrs"]["data-api"])
def test_a_control_the_img2img_tab_shows_is_not_refused_by_img2img_at_run_time(control):
    # Schema-valid is not enough: img2img refuses variation seeds and a refiner when it runs (fidelity, refiner),
    # so those controls must be txt2img-only.
    name = control["attrs"]["data-api"]
    for value in values_of(control):
        req = Img2ImgRequest(prompt="x", **{name: value})
        try:
            fidelity.resolve(req, {}, "img2img")
            load_refiner(Job(user="u", mode="img2img", request=req, task_id="t"), None, None)
        except InvalidRequest as e:
            pytest.fail(f"the img2img tab shows {name}={value!r}, which img2img refuses: {e}")


def test_image_cfg_scale_has_no_control_since_no_model_here_uses_it():
    # A1111 uses it for instruct-pix2pix ("edit") checkpoints only and shows its slider only then; easel loads none.
    assert "image_cfg_scale" not in {c["attrs"].get("data-api") for c in controls()}


def test_the_page_has_a_control_for_each_sampling_field_issue_17_asked_for():
    names = {c["attrs"].get("data-api") for c in generation_controls()}
    assert names >= {"hr_prompt", "hr_negative_prompt", "hr_sampler_name", "hr_scheduler", "eta", "s_churn",
                     "s_tmin", "s_tmax", "s_noise"}


def test_extras_controls_are_fields_of_the_extras_request():
    extras = [c for c in controls() if "data-api" in c["attrs"] and c["where"] == "tab-extras"]
    assert extras
    for c in extras:
        name = c["attrs"]["data-api"]
        assert name in ExtrasSingleImageRequest.model_fields, name
        for value in values_of(c):
            ExtrasSingleImageRequest(image="", **{name: value})


def test_controlnet_unit_controls_are_unit_fields_with_values_it_accepts():
    units = [c for c in controls() if "data-cn" in c["attrs"] and c["attrs"]["data-cn"] not in ("file",)]
    assert units
    for c in units:
        name = c["attrs"]["data-cn"]
        assert name in ControlNetUnit.model_fields, name
        for value in values_of(c):
            ControlNetUnit(**{name: int(value) if c["tag"] == "select" else value})
