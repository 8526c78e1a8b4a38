"""The public contract: A1111 request fields with EAS extensions, bounds in the schema."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from handlers import unhonoured
from handlers.samplers import MISSING_SAMPLERS, SAMPLERS, SCHEDULES, find_sampler, find_schedule
from loaders.errors import InvalidRequest

MAX_IMAGES_PER_REQUEST = 16
MAX_PROMPT_CHARS = 20_000
SEED_MAX = 2**32 - 1
MAX_STYLES = 32


DISTILLED_CFG_DEFAULT = 3.5  # Forge's default


class GenerationRequest(BaseModel):
    """Fields shared by txt2img and img2img (A1111 names and defaults). Keys A1111 itself ignores are ignored;
    A1111 fields that would change the result and are not honoured here are refused by name (handlers.unhonoured)."""

    model_config = ConfigDict(extra="ignore")
    endpoint: ClassVar[str] = "txt2img"  # which A1111 route the model is for

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(-1, ge=-1, le=SEED_MAX, description="-1 picks a random seed; image k uses seed + k")
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0, allow_inf_nan=False)
    distilled_cfg_scale: float = Field(DISTILLED_CFG_DEFAULT, ge=0.0, le=30.0, allow_inf_nan=False,
                                       description="Forge's FLUX.1-dev guidance (an input of the model); "
                                                   "other families refuse any other value than 3.5")
    width: int = Field(512, ge=64, le=2048)
    height: int = Field(512, ge=64, le=2048)
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    sampler_name: str | None = Field(None, description=f"one of: {', '.join(s.name for s in SAMPLERS)}")
    sampler_index: str | None = Field(None, description="A1111's older name for sampler_name")
    scheduler: str | None = Field(None, description=f"one of: {', '.join(l for l, _ in SCHEDULES.values())}")
    send_images: bool = True
    save_images: bool = Field(False, description="A1111: also return (and save) the grid of a multi-image request")
    styles: list[str] = Field(default_factory=list, max_length=MAX_STYLES,
                              description="names from /sdapi/v1/prompt-styles, applied as A1111 applies them")
    subseed: int = Field(-1, ge=-1, le=SEED_MAX, description="variation seed; -1 picks one")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    seed_resize_from_h: int = Field(-1, ge=-1, le=2048)
    seed_resize_from_w: int = Field(-1, ge=-1, le=2048)
    tiling: bool | None = Field(None, description="seamless tiling; null uses the `tiling` option")
    eta: float | None = Field(None, ge=0.0, le=10.0, allow_inf_nan=False)
    s_min_uncond: float | None = Field(None, ge=0.0, le=0.0, description="negative guidance minimum sigma: "
                                       "not supported (only 0)")
    s_churn: float | None = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    s_tmin: float | None = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    s_tmax: float | None = Field(None, ge=0.0, le=1000.0, allow_inf_nan=False)
    s_noise: float | None = Field(None, ge=0.0, le=10.0, allow_inf_nan=False)
    override_settings_restore_afterwards: bool = Field(True, description="only true: settings are per request; "
                                                       "POST /sdapi/v1/options changes them for good")
    disable_extra_networks: bool = Field(False, description="only false is supported")
    infotext: str | None = Field(None, max_length=0, description="A1111 1.10 infotext-to-fields: not supported")
    override_settings: dict[str, Any] = Field(default_factory=dict)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, description="EAS keys ("
                                             f"{', '.join(sorted(unhonoured.KNOWN_SCRIPTS))}); others are refused")
    restore_faces: bool | None = Field(None, description="GFPGAN / CodeFormer (A1111 option "
                                       "`face_restoration_model`) on every image")
    script_name: str | None = Field(None, max_length=100, description="an A1111 script (GET /sdapi/v1/scripts)")
    script_args: list[Any] = Field(default_factory=list, max_length=64, description="the script's arguments, "
                                   "positionally, as A1111's scripts take them")
    force_task_id: str | None = None
    refiner_checkpoint: str | None = Field(None, description="SDXL refiner (A1111): a checkpoint that finishes "
                                           "the denoising; `None` or empty means none")
    refiner_switch_at: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False,
                                            description="fraction of the steps after which the refiner takes "
                                            "over (default 0.8; 1 means never)")
    webhook: str | None = Field(None, max_length=2048,
                                description="with ?task_id=: POSTed the finished task (signed X-Easel-Signature)")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int, info) -> int:
        if v % 8:
            raise ValueError(f"`{info.field_name}` has to be a multiple of 8 but is {v}")
        return v

    @field_validator("prompt", "negative_prompt", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v

    @field_validator("sampler_name", "sampler_index")
    @classmethod
    def _known_sampler(cls, v: str | None, info) -> str | None:
        if v is None or v == "":
            return None
        sampler = find_sampler(v)
        if sampler is None:
            names = ", ".join(s.name for s in SAMPLERS)
            if v.strip() in MISSING_SAMPLERS:
                raise ValueError(f"`{info.field_name}` {v!r}: this A1111 sampler is not available here yet "
                                 f"({MISSING_SAMPLERS[v.strip()]}); use one of: {names}")
            raise ValueError(f"`{info.field_name}` {v!r} is not a sampler; use one of: {names}")
        return sampler.name

    @field_validator("scheduler")
    @classmethod
    def _known_schedule(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        key = find_schedule(v)
        if key is None:
            labels = ", ".join(label for label, _ in SCHEDULES.values())
            raise ValueError(f"`scheduler` {v!r} is not a schedule type; use one of: {labels}")
        return key

    @field_validator("disable_extra_networks", "override_settings_restore_afterwards")
    @classmethod
    def _only_default(cls, v: bool, info) -> bool:
        if v != cls.model_fields[info.field_name].default:
            raise ValueError(f"`{info.field_name}` {v} is not supported here")
        return v

    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data):
        if isinstance(data, dict) and (found := unhonoured.refusals(data, cls.endpoint)):
            raise ValueError("; ".join(found))
        return data

    @field_validator("alwayson_scripts", mode="before")
    @classmethod
    def _lower_script_names(cls, v):
        # A1111 matches script names case-insensitively (clients send "ControlNet").
        if isinstance(v, dict):
            return {str(k).lower(): val for k, val in v.items()}  # unknown ones: handlers.unhonoured
        return v

    @model_validator(mode="after")
    def _cross_field(self):
        n = self.batch_size * self.n_iter
        if n > MAX_IMAGES_PER_REQUEST:
            raise ValueError(
                f"`batch_size` × `n_iter` is {self.batch_size} × {self.n_iter} = {n} images; "
                f"at most {MAX_IMAGES_PER_REQUEST} per request"
            )
        return self

    # --- resolved views (the API edge converts A1111 conventions here) ---

    @property
    def sampler(self) -> str:
        return self.sampler_name or self.sampler_index or "Euler a"

    @property
    def schedule(self) -> str:
        """The schedule type this request samples with: A1111's "Automatic" is the sampler's own default."""
        return self.scheduler or find_sampler(self.sampler).default_schedule or "automatic"

    @property
    def seed_or_none(self) -> int | None:
        return None if self.seed == -1 else self.seed

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def script(self, name: str) -> Any:
        """An `alwayson_scripts` entry, unwrapped from A1111's `{"args": [value]}` form when given so."""
        value = self.alwayson_scripts.get(name.lower())
        if isinstance(value, dict) and set(value) == {"args"} and isinstance(value["args"], list):
            return value["args"][0] if len(value["args"]) == 1 else value["args"]
        return value

    def checkpoint_name(self) -> str | None:
        name = self._script_str("sd_model_checkpoint") or self._setting_str("sd_model_checkpoint")
        return strip_title_hash(name) if name else None

    def refiner(self) -> tuple[str, float] | None:
        """(refiner checkpoint name, switch fraction) when a refiner will actually run."""
        name = (self.refiner_checkpoint or "").strip()
        switch = 0.8 if self.refiner_switch_at is None else self.refiner_switch_at
        if name.lower() in ("", "none") or switch >= 1.0:
            return None
        return name, switch

    def save_dir(self) -> str | None:
        return self._script_str("save_dir")

    def vae_name(self) -> str | None:
        return self._script_str("sd_vae") or self._setting_str("sd_vae")

    def _script_str(self, name: str) -> str | None:
        return _optional_str(self.script(name), name)

    def _setting_str(self, name: str) -> str | None:
        return _optional_str(self.override_settings.get(name), name)


def strip_title_hash(name: str) -> str:
    """A1111 names a checkpoint by its title, `file.safetensors [0123abcdef]`; the file name is the part before."""
    return re.sub(r" \[[0-9a-fA-F]{8,64}\]$", "", name)


def _optional_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"`{name}` must be a string, not {value!r:.100}")
    return value or None


LATENT_UPSCALERS = {  # A1111 name → torch interpolate (mode, antialias)
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = {"None": "lanczos", "Lanczos": "lanczos", "Nearest": "nearest"}  # A1111 name → PIL filter
MAX_SIDE = 2048
_SAME = ("", "use same sampler", "use same scheduler", "use same checkpoint")


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0, allow_inf_nan=False, description="hires second pass")
    hr_scale: float = Field(2.0, ge=1.0, le=8.0, allow_inf_nan=False)
    hr_upscaler: str = Field("Latent", description=f"one of: {', '.join([*LATENT_UPSCALERS, *IMAGE_UPSCALERS])}")
    hr_second_pass_steps: int = Field(0, ge=0, le=150, description="0 uses `steps`")
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_checkpoint_name: str | None = None
    hr_cfg: float | None = Field(None, ge=0.0, le=30.0, allow_inf_nan=False,
                                 description="Forge's hires-pass CFG scale; unset: `cfg_scale` (A1111 has no such field)")
    hr_distilled_cfg: float = Field(DISTILLED_CFG_DEFAULT, ge=0.0, le=30.0, allow_inf_nan=False,
                                    description="Forge's hires-pass `distilled_cfg_scale` (FLUX.1-dev), its default 3.5")
    firstphase_width: int = Field(0, ge=0, le=MAX_SIDE, description="A1111 (old API): the first pass's width; "
                                  "`width` becomes the hires target")
    firstphase_height: int = Field(0, ge=0, le=MAX_SIDE)

    @model_validator(mode="before")
    @classmethod
    def _firstphase(cls, data):
        # A1111 StableDiffusionProcessingTxt2Img.__post_init__: a first-phase size replaces width × height
        # (the hires target is then recomputed from hr_scale / hr_resize_*, as A1111 does).
        if isinstance(data, dict) and (data.get("firstphase_width") or data.get("firstphase_height")):
            if not (data.get("firstphase_width") and data.get("firstphase_height")):
                raise ValueError("`firstphase_width` and `firstphase_height` must both be set (or both 0), not "
                                 f"{data.get('firstphase_width')} × {data.get('firstphase_height')}")
            data = {**data, "width": data.get("firstphase_width") or 0, "height": data.get("firstphase_height") or 0}
        return data

    @field_validator("hr_prompt", "hr_negative_prompt", mode="before")
    @classmethod
    def _hr_none_is_empty(cls, v):
        return "" if v is None else v

    @field_validator("hr_upscaler")
    @classmethod
    def _known_upscaler(cls, v: str) -> str:
        for name in [*LATENT_UPSCALERS, *IMAGE_UPSCALERS]:
            if v.strip().lower() == name.lower():
                return name
        if not v.strip() or len(v) > 200:
            raise ValueError(f"`hr_upscaler` {v[:80]!r} is not an upscaler name")
        return v.strip()  # a model upscaler (GET /sdapi/v1/upscalers): resolved in the caller's models at run time

    @field_validator("hr_sampler_name")
    @classmethod
    def _hr_sampler(cls, v: str | None) -> str | None:
        if v is None or v.strip().lower() in _SAME:
            return None
        sampler = find_sampler(v)
        if sampler is None:
            raise ValueError(f"`hr_sampler_name` {v!r} is not a sampler; use one of: "
                             f"{', '.join(s.name for s in SAMPLERS)}")
        return sampler.name

    @field_validator("hr_scheduler")
    @classmethod
    def _hr_schedule(cls, v: str | None) -> str | None:
        if v is None or v.strip().lower() in _SAME:
            return None
        key = find_schedule(v)
        if key is None:
            raise ValueError(f"`hr_scheduler` {v!r} is not a schedule type")
        return key

    @field_validator("hr_checkpoint_name")
    @classmethod
    def _hr_checkpoint(cls, v: str | None) -> str | None:
        if v is None or v.strip().lower() in _SAME:
            return None
        raise ValueError(f"`hr_checkpoint_name` {v[:80]!r}: a second checkpoint for the hires pass is not supported")

    @model_validator(mode="after")
    def _hires_size(self):
        if self.enable_hr:
            w, h = self.hr_size
            if w > MAX_SIDE or h > MAX_SIDE:
                raise ValueError(f"hires fix would make a {w}x{h} image; at most {MAX_SIDE} pixels a side "
                                 f"(`hr_scale` {self.hr_scale:g}, `hr_resize_x` {self.hr_resize_x}, "
                                 f"`hr_resize_y` {self.hr_resize_y})")
        return self

    @property
    def hr_size(self) -> tuple[int, int]:
        """The final (width, height) of a hires-fixed image, as A1111 computes it, floored to multiples of 8."""
        x, y = self.hr_resize_x, self.hr_resize_y
        if not x and not y:
            w, h = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        elif not y:
            w, h = x, x * self.height // self.width
        elif not x:
            w, h = y * self.width // self.height, y
        else:
            w, h = x, y
        return max(64, w // 8 * 8), max(64, h // 8 * 8)


class Img2ImgRequest(GenerationRequest):
    endpoint: ClassVar[str] = "img2img"
    init_images: list[str] = Field(default_factory=list, max_length=MAX_IMAGES_PER_REQUEST,
                                   description="base64 images or links; EAS: alwayson_scripts.image_link")
    resize_mode: int = Field(0, ge=0, le=3, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                                                        "3 just resize (latent upscale)")
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0, allow_inf_nan=False)
    image_cfg_scale: float | None = Field(None, ge=0.0, le=30.0, allow_inf_nan=False,
                                          description="accepted; only instruct-pix2pix models use it")
    mask: str | None = Field(None, description="base64 or link; white is repainted. null means no mask")
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="only the masked area (with padding) is generated")
    inpaint_full_res_padding: int = Field(0, ge=0, le=1024)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)

    @field_validator("mask", mode="before")
    @classmethod
    def _empty_mask_is_none(cls, v):
        return None if v in ("", None) else v

    @field_validator("inpaint_full_res", mode="before")
    @classmethod
    def _full_res_int(cls, v):
        return bool(v) if isinstance(v, int) else v  # A1111 clients send 0/1 too


class StageTimings(BaseModel):
    """Seconds spent in each stage of one execution (what the ledger keeps)."""

    queue_s: float = 0.0
    load_s: float = 0.0
    generate_s: float = 0.0
    persist_s: float = 0.0
    total_s: float = 0.0


class Timings(StageTimings):
    """The stages plus what the caller is billed: generate_s only, at the device's price."""

    billed_s: float = 0.0
    cost: float = 0.0


class ResponseParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    id_task: str
    status: int = 0
    image_url: str = ""
    seed: str = ""
    error_msg: str = ""
    total_time: float = 0.0
    timings: Timings = Field(default_factory=Timings)


class GenerationResponse(BaseModel):
    images: list[str] = Field(default_factory=list, description="base64 PNGs (empty with save_dir or send_images=false)")
    parameters: ResponseParameters
    info: str = ""

