"""What sd-webui-controlnet's own routes answer (`scripts/api.py`): version, lists, control types, settings, detect."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from handlers.generation import outputs
from handlers.generation.controlnet_units import MAX_UNITS, ControlNetUnit
from loaders.adapters import preprocessor_table
from loaders.adapters.preprocessors import run_module
from loaders.errors import InvalidRequest
from loaders.models.manager import list_models
from loaders.storage.images import load_image

API_VERSION = 2  # external_code.get_api_version()
MAX_DETECT_IMAGES = 8
# modules whose result is an embedding for the sampler, not a picture: the extension's detect refuses them too
NOT_DETECTABLE = {"clip_vision", "revision_clipvision", "revision_ignore_prompt", "ip-adapter-auto"}


def version() -> dict:
    return {"version": API_VERSION}


def model_names(services, user: str) -> list[str]:
    """The caller's ControlNet models (own, then public), as unit `model` values (file names without .safetensors)."""
    return [info.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
            for info in list_models(services.store, user, "controlnet")]


def model_list(services, user: str) -> dict:
    # `?update=` asks the extension to rescan its folder; this listing always reads the store, so it is always fresh
    return {"model_list": model_names(services, user)}


def module_list(alias_names: bool = False) -> dict:
    """Internal names (or UI labels with `alias_names`), and per module its sliders and whether it needs a model."""
    entries = preprocessor_table.entries().values()
    names = [e.label if alias_names else e.name for e in entries]
    detail = {(e.label if alias_names else e.name): {"model_free": e.model_free, "sliders": e.sliders()}
              for e in entries}
    return {"module_list": names, "module_detail": detail}


def control_types(services, user: str) -> dict:
    """Each control type with its preprocessors (labels), the caller's models that fit it, and the defaults."""
    models = ["None", *model_names(services, user)]
    types = {}
    for tag in preprocessor_table.tags():
        if tag == "All":
            fitting, default_model = models, "None"
        else:
            fitting = ["None", *(m for m in models[1:] if preprocessor_table.model_matches(tag, m))]
            # the extension prefers a ControlNet 1.1 model ("11" in the name) as the default
            default_model = next((m for m in fitting[1:] if "11" in m), fitting[1] if len(fitting) > 1 else "None")
        types[tag] = {"module_list": [e.label for e in preprocessor_table.by_tag(tag)], "model_list": fitting,
                      "default_option": "none" if tag == "All" else preprocessor_table.default_for(tag).label,
                      "default_model": default_model}
    return {"control_types": types}


def settings() -> dict:
    return {"control_net_unit_count": MAX_UNITS}


class DetectRequest(BaseModel):
    """The body of `POST /controlnet/detect`, with the extension's names and defaults."""

    model_config = ConfigDict(extra="forbid")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=MAX_DETECT_IMAGES)
    controlnet_processor_res: float = Field(-1, allow_inf_nan=False)
    controlnet_threshold_a: float = Field(-1, allow_inf_nan=False)
    controlnet_threshold_b: float = Field(-1, allow_inf_nan=False)
    controlnet_masks: list[str] = Field(default_factory=list, max_length=MAX_DETECT_IMAGES)
    low_vram: bool = False  # accepted: nothing to offload on a server that keeps models resident


def detect(services, user: str, body: DetectRequest) -> dict:
    """Run one preprocessor over each image: `{"images": [base64 PNG...], "info": "Success"}`."""
    # 1. The module, as the extension checks it: known, a picture, images given, masks where required
    try:
        entry = preprocessor_table.find(body.controlnet_module)
    except KeyError:
        raise InvalidRequest(f"`controlnet_module` {body.controlnet_module!r:.60}: Module not available "
                             "(GET /controlnet/module_list lists them)") from None
    if entry.name in NOT_DETECTABLE or not entry.returns_image:
        raise InvalidRequest(f"`controlnet_module` {body.controlnet_module!r}: Module not supported by detect "
                             "(its result is an embedding, not a map)")
    if not body.controlnet_input_images:
        raise InvalidRequest("`controlnet_input_images`: No image selected")
    if entry.requires_mask and len(body.controlnet_masks) != len(body.controlnet_input_images):
        raise InvalidRequest(f"`controlnet_masks`: Preprocessor {body.controlnet_module} requires one mask per image")
    if body.controlnet_masks and not entry.requires_mask:
        raise InvalidRequest(f"`controlnet_masks`: preprocessor {body.controlnet_module} does not take masks")
    # 2. Out-of-range sliders fall back to the module's defaults (the extension's bound check)
    unit = ControlNetUnit(module=entry.name, processor_res=body.controlnet_processor_res,
                          threshold_a=body.controlnet_threshold_a, threshold_b=body.controlnet_threshold_b)
    unit.bound_sliders()
    # 3. Each image, then its map
    loader = services.controlnets.annotators.loader(user, "controlnet_module")
    images, poses = [], []  # OpenPose modules also give their keypoints, one JSON per image (the extension's)
    for k, raw in enumerate(body.controlnet_input_images):
        image = load_image(raw, f"controlnet_input_images[{k}]", store=services.store, user=user).convert("RGB")
        mask = load_image(body.controlnet_masks[k], f"controlnet_masks[{k}]", store=services.store,
                          user=user) if body.controlnet_masks else None
        found = run_module(entry.name, image, resolution=int(unit.processor_res), threshold_a=unit.threshold_a,
                           threshold_b=unit.threshold_b, load_annotator=loader, field="controlnet_module",
                           on_pose=poses.append, mask=mask)
        images.append(outputs.b64(outputs.png_bytes(found)))
    return {"images": images, "info": "Success", **({"poses": poses} if poses else {}),
            **({"adjusted": unit.adjusted} if unit.adjusted else {})}
