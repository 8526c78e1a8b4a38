"""Model families: which shipped diffusers config a single-file checkpoint loads with, read from its keys.

How a family is told (first answer wins):
1. easel's own metadata `easel.family` (the demo checkpoints carry it);
2. the keys (and one shape): SDXL base has `conditioner.embedders.1.*`, the SDXL refiner only
   `conditioner.embedders.0.model.*` (OpenCLIP bigG), SD 2.x `cond_stage_model.model.*` (OpenCLIP ViT-H),
   SD 1.x `cond_stage_model.transformer.*` (OpenAI CLIP-L); 9 UNet input channels mean an inpainting model;
   SD 3.5 `model.diffusion_model.joint_blocks.*` (Medium: MMDiT-X `attn2`), FLUX.1
   `double_blocks.*.img_attn.norm.key_norm.scale` with or without that prefix (dev: `guidance_in.*`);
3. SD 2.x only: v-prediction (768-v) and epsilon (512 base) have identical keys. Like A1111 we look, in
   order, at safetensors metadata (`modelspec.prediction_type`, kohya's `ss_v_parameterization`), at a
   `<name>.yaml` sidecar next to the checkpoint (`parameterization: "v"`), and else at the loaded UNet
   itself (`looks_like_v_prediction`, A1111's `is_using_v_parameterization_for_sd2` test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loaders.errors import InvalidRequest

CONFIGS = Path(__file__).parents[1] / "configs"

CLIP_L = "clip-vit-large-patch14"  # OpenAI CLIP ViT-L/14: SD 1.x, SDXL's first encoder
OPENCLIP_H = "clip-vit-h-14"  # OpenCLIP ViT-H/14 (same BPE vocab, pad "!"): SD 2.x
OPENCLIP_BIGG = "clip-vit-bigG-14"  # OpenCLIP ViT-bigG/14 (same BPE vocab, pad "!"): SDXL's second encoder
T5_XXL = "t5-v1_1-xxl"  # Google T5 v1.1 SentencePiece vocabulary (32k): SD 3.5's third encoder

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
DIT_PREFIX = "model.diffusion_model."  # where A1111 / Forge / ComfyUI single files keep the denoiser


@dataclass(frozen=True)
class Family:
    name: str
    arch: str  # "sd1" | "sd2" | "sdxl" | "sdxl-refiner" | "sd3" | "flux": what adapters (LoRA, ControlNet) must match
    config: str  # folder under loaders/configs/
    pipeline: str  # diffusers class the single file loads as (img2img/inpaint are made from it with from_pipe)
    tokenizers: dict[str, str] = field(default_factory=dict)  # subfolder → tokenizer source (empty: shipped)
    inpainting: bool = False  # 9-channel UNet (latents + mask + masked-image latents)
    unet_overrides: dict = field(default_factory=dict)  # applied to a shared config folder when assembling

    @property
    def is_sdxl(self) -> bool:
        return self.arch in ("sdxl", "sdxl-refiner")

    @property
    def is_flow(self) -> bool:
        """A rectified-flow transformer (SD 3.5, FLUX.1): flow-matching Euler is its sampler."""
        return self.arch in ("sd3", "flux")

    @property
    def distilled_guidance(self) -> bool:
        """FLUX.1-dev: guidance is an input of the model (Forge's `distilled_cfg_scale`), not two predictions."""
        return self.arch == "flux" and "schnell" not in self.name


_SD, _XL, _XL_REFINER = "StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"
_SD3, _FLUX = "StableDiffusion3Pipeline", "FluxPipeline"
_SD3_TOKENIZERS = {"tokenizer": CLIP_L, "tokenizer_2": OPENCLIP_BIGG, "tokenizer_3": T5_XXL}
_NINE = {"in_channels": 9}  # inpainting variants share their base family's folder
FAMILIES = {f.name: f for f in [
    Family("sd15", "sd1", "sd15", _SD, {"tokenizer": CLIP_L}),
    Family("sd15-inpaint", "sd1", "sd15", _SD, {"tokenizer": CLIP_L}, inpainting=True, unet_overrides=_NINE),
    Family("sd2", "sd2", "sd2", _SD, {"tokenizer": OPENCLIP_H}),
    Family("sd2-v", "sd2", "sd2-v", _SD, {"tokenizer": OPENCLIP_H}),
    Family("sd2-inpaint", "sd2", "sd2", _SD, {"tokenizer": OPENCLIP_H}, inpainting=True, unet_overrides=_NINE),
    Family("sdxl", "sdxl", "sdxl", _XL, {"tokenizer": CLIP_L, "tokenizer_2": OPENCLIP_BIGG}),
    Family("sdxl-inpaint", "sdxl", "sdxl", _XL, {"tokenizer": CLIP_L, "tokenizer_2": OPENCLIP_BIGG}, inpainting=True,
           unet_overrides=_NINE),
    Family("sdxl-refiner", "sdxl-refiner", "sdxl-refiner", _XL_REFINER, {"tokenizer_2": OPENCLIP_BIGG}),
    # tiny random models for tests and demos; their tokenizers are shipped
    Family("demo", "sd1", "demo", _SD),
    Family("demo-inpaint", "sd1", "demo-inpaint", _SD, inpainting=True),
    Family("demo-sd2", "sd2", "demo-sd2", _SD),
    Family("demo-sdxl", "sdxl", "demo-sdxl", _XL),
    Family("demo-sdxl-refiner", "sdxl-refiner", "demo-sdxl-refiner", _XL_REFINER),
    # SD 3.5 (MMDiT + CLIP-L, CLIP-G, T5-XXL); Large Turbo has Large's keys and config
    Family("sd35-large", "sd3", "sd35-large", _SD3, _SD3_TOKENIZERS),
    Family("sd35-medium", "sd3", "sd35-medium", _SD3, _SD3_TOKENIZERS),
    Family("demo-sd3", "sd3", "demo-sd3", _SD3, {"tokenizer_3": T5_XXL}),  # tiny CLIP vocabularies shipped
    # FLUX.1 (double/single-stream transformer + CLIP-L, T5-XXL); dev has a guidance embedder, schnell none
    Family("flux1-dev", "flux", "flux1-dev", _FLUX, {"tokenizer": CLIP_L, "tokenizer_2": T5_XXL}),
    Family("flux1-schnell", "flux", "flux1-schnell", _FLUX, {"tokenizer": CLIP_L, "tokenizer_2": T5_XXL}),
    Family("demo-flux", "flux", "demo-flux", _FLUX, {"tokenizer_2": T5_XXL}),
    Family("demo-flux-schnell", "flux", "demo-flux-schnell", _FLUX, {"tokenizer_2": T5_XXL}),
]}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"no shipped config for model family {name!r}")
    return FAMILIES[name]


def config_dir(name: str) -> Path:
    path = CONFIGS / family(name).config
    if not (path / "model_index.json").is_file():
        raise KeyError(f"no shipped config for model family {name!r}")
    return path


@dataclass(frozen=True)
class Detection:
    family: str
    settled: bool = True  # False: SD 2.x whose prediction type only the loaded UNet can tell


def detect_family(keys: set[str], metadata: dict[str, str] | None, shapes: dict[str, tuple] | None = None,
                  sidecar: str | None = None) -> str:
    """The family a checkpoint loads as (SD 2.x with no declared prediction type: `sd2`, the 512 base)."""
    return detect(keys, metadata, shapes, sidecar).family


def detect(keys: set[str], metadata: dict[str, str] | None, shapes: dict[str, tuple] | None = None,
           sidecar: str | None = None) -> Detection:
    """Family from easel metadata, else keys + the UNet input shape (+ metadata/sidecar for SD 2.x v-prediction)."""
    metadata = metadata or {}
    if metadata.get("easel.family"):
        return Detection(metadata["easel.family"])
    if MMDIT_FIRST in keys:
        return Detection(mmdit_family(keys))
    if flux_prefix(keys) is not None:
        return Detection(flux_family(keys, shapes or {}))
    arch = _arch_from_keys(keys)
    inpainting = _inpainting(shapes or {})
    if arch == "sdxl-refiner":
        return Detection("sdxl-refiner")
    if inpainting:
        return Detection(f"{'sd15' if arch == 'sd1' else arch}-inpaint")
    if arch == "sd2":
        v = declared_v_prediction(metadata, sidecar)
        return Detection("sd2" if v is None else ("sd2-v" if v else "sd2"), settled=v is not None)
    return Detection("sd15" if arch == "sd1" else arch)


MMDIT_FIRST = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
SD3_T5 = "text_encoders.t5xxl.transformer.shared.weight"


def mmdit_family(keys: set[str]) -> str:
    """SD 3.5 from its MMDiT keys: Medium (MMDiT-X) has a second image attention (`x_block.attn2`) in its
    first 13 blocks; Large (and Large Turbo) has 38 blocks and none."""
    blocks = {int(k.split(".")[3]) for k in keys if k.startswith("model.diffusion_model.joint_blocks.")}
    if any(".x_block.attn2." in k for k in keys):
        return "sd35-medium"
    if len(blocks) == 38:
        return "sd35-large"
    raise InvalidRequest(f"an SD 3 MMDiT with {len(blocks)} blocks and no MMDiT-X attention (SD 3.0 Medium?) "
                         "is not supported; SD 3.5 Large, Large Turbo and Medium are")


FLUX_MARK = "double_blocks.0.img_attn.norm.key_norm.scale"  # diffusers' own FLUX test key
FLUX_IMG_IN = ("img_in.weight", DIT_PREFIX + "img_in.weight")
_QUANTIZED = (".absmax", ".quant_map", ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")


def flux_prefix(keys: set[str]) -> str | None:
    """Where a FLUX transformer's keys start: `model.diffusion_model.` (Forge / ComfyUI full checkpoints),
    "" (BFL's transformer-only `flux1-dev.safetensors`), None: not FLUX."""
    if DIT_PREFIX + FLUX_MARK in keys:
        return DIT_PREFIX
    return "" if FLUX_MARK in keys else None


def flux_family(keys: set[str], shapes: dict[str, tuple]) -> str:
    """FLUX.1 dev (a guidance embedder, `guidance_in.*`) or schnell (none); Fill / Depth / quantized files refused."""
    prefix = flux_prefix(keys) or ""
    if any(k.endswith(_QUANTIZED) for k in keys):
        raise InvalidRequest("this FLUX checkpoint is quantized with bitsandbytes (NF4/FP4, `.absmax` keys); "
                             "load an fp16/bf16/fp8 file instead")
    shape = shapes.get(prefix + "img_in.weight")
    if shape is not None and len(shape) == 2 and shape[1] != 64:  # 384: Fill, 128: Depth / Canny
        raise InvalidRequest(f"a FLUX transformer with {shape[1]} input channels (FLUX.1 Fill / Depth / Canny) is "
                             "not supported; FLUX.1 dev and schnell (64) are")
    return "flux1-dev" if prefix + "guidance_in.in_layer.weight" in keys else "flux1-schnell"


SHAPE_KEYS = (UNET_IN, *FLUX_IMG_IN)  # the tensors whose shapes detection reads


def header_shapes(path: Path) -> dict[str, tuple]:
    """The few tensor shapes detection needs, read from the header (no tensor data is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in SHAPE_KEYS if k in f.keys()}


def _arch_from_keys(keys: set[str]) -> str:
    if UNET_IN not in keys:
        raise InvalidRequest("this file has no Stable Diffusion UNet (`model.diffusion_model.*`); "
                             "only SD 1.x, SD 2.x and SDXL single-file checkpoints can be loaded")
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.1."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        return "sdxl-refiner"
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    raise InvalidRequest("cannot tell this checkpoint's family: it has a UNet but no text encoder "
                         "(`cond_stage_model.*` or `conditioner.embedders.*`)")


def _inpainting(shapes: dict[str, tuple]) -> bool:
    shape = shapes.get(UNET_IN)
    if shape is not None and len(shape) != 4:  # a lying file: the first conv's weight is always 4-D
        raise InvalidRequest(f"`{UNET_IN}` has shape {list(shape)}; a UNet's first convolution is 4-D")
    if shape is None or shape[1] == 4:
        return False
    if shape[1] == 9:
        return True
    raise InvalidRequest(f"the UNet takes {shape[1]} input channels; only 4 (normal) and 9 (inpainting) "
                         "checkpoints are supported")


def declared_v_prediction(metadata: dict[str, str], sidecar: str | None) -> bool | None:
    """True/False where the file's metadata or its A1111 `.yaml` sidecar says, None where nothing does."""
    pred = metadata.get("modelspec.prediction_type", "").strip().lower()
    if pred in ("v", "v_prediction", "v-prediction"):
        return True
    if pred in ("epsilon", "eps"):
        return False
    arch = metadata.get("modelspec.architecture", "")
    if arch.startswith("stable-diffusion-v2"):
        return "-v" in arch.split("/")[0][len("stable-diffusion-v2"):]  # "stable-diffusion-v2-768-v"
    kohya = metadata.get("ss_v_parameterization", "").strip().lower()
    if kohya in ("true", "false"):
        return kohya == "true"
    if sidecar:
        return _sidecar_parameterization(sidecar)
    return None


def _sidecar_parameterization(text: str) -> bool | None:
    import yaml

    try:
        doc = yaml.safe_load(text)
        params = doc["model"]["params"]
    except Exception:  # an unreadable sidecar is as good as none: A1111 falls back the same way
        return None
    return params.get("parameterization", "eps") == "v" if isinstance(params, dict) else None


def looks_like_v_prediction(unet) -> bool:
    """A1111's test: at t=999 an epsilon model returns about its input, a v model strongly below it."""
    import torch

    p = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    cond = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=p.device), cond).sample
    return (out.float() - x.float()).mean().item() < -1
