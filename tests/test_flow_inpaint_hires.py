"""SD 3.5 and FLUX.1 beyond txt2img / img2img: inpainting with A1111's mask fields (the family's own diffusers
inpaint pipeline over the loaded modules) and hires fix (a txt2img pass, an upscale, the family's img2img pass),
over HTTP on the tiny random models in their real single-file layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from loaders.demo.flux import DEMO_FLUX_NAME, demo_flux_checkpoint_bytes
from loaders.demo.mmdit import DEMO_SD3_NAME, demo_sd3_checkpoint_bytes, tiny_t5_tokenizer_json
from tests.conftest import auth
from tests.test_sd3 import b64_png, pixels

T5_KEY = "system/tokenizers/t5-v1_1-xxl/tokenizer.json"
FAMILIES = {"flux": (DEMO_FLUX_NAME, "demo-flux", 1.0), "sd3": (DEMO_SD3_NAME, "demo-sd3", 3.0)}
BOX = (16, 16, 48, 48)  # the masked square of the 64×64 tests


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, bytes]:
    return {"flux": demo_flux_checkpoint_bytes(), "sd3": demo_sd3_checkpoint_bytes()}


@pytest.fixture(params=sorted(FAMILIES))
def family(request, store, checkpoints) -> str:
    store.put_bytes(f"public/models/Stable-diffusion/{FAMILIES[request.param][0]}", checkpoints[request.param])
    store.put_bytes(T5_KEY, tiny_t5_tokenizer_json())
    return request.param


def generate(client, family: str, route: str = "txt2img", **body):
    name, _, cfg = FAMILIES[family]
    payload = {"prompt": "a cute dog", "width": 64, "height": 64, "steps": 2, "seed": 2, "cfg_scale": cfg,
               "override_settings": {"sd_model_checkpoint": name}, **body}
    return client.post(f"/sdapi/v1/{route}", json=payload, headers=auth())


def picture(width: int = 64, height: int = 64) -> np.ndarray:
    """A smooth colour ramp (any change a pass makes shows against it) with a white square where the mask is
    (so "fill", which paints the masked area from its surroundings, starts from another picture than "original")."""
    y, x = np.mgrid[0:height, 0:width]
    ramp = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 128)], -1).astype(np.uint8)
    ramp[BOX[1] + 4:BOX[3] - 4, BOX[0] + 4:BOX[2] - 4] = 255
    return ramp


def box_mask(width: int = 64, height: int = 64, box=BOX) -> str:
    mask = np.zeros((height, width, 3), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    return b64_png(mask)


def outside(array: np.ndarray, box=BOX, margin: int = 10) -> np.ndarray:
    """Pixels well away from the masked box (the blur and the 16-pixel latent patches stay inside the margin)."""
    keep = np.ones(array.shape[:2], bool)
    keep[max(0, box[1] - margin):box[3] + margin, max(0, box[0] - margin):box[2] + margin] = False
    return array[keep].astype(np.int16)


def inpaint(client, family: str, init: np.ndarray, **body):
    fields = {"mask_blur": 4, "inpainting_fill": 1, "inpaint_full_res": False, "denoising_strength": 0.75,
              "steps": 4, **body}
    return generate(client, family, "img2img", init_images=[b64_png(init)], mask=box_mask(*init.shape[1::-1]),
                    **fields)


def test_inpainting_repaints_the_mask_only_in_both_inpaint_areas(client, family):
    init = picture()
    for full_res in (False, True):
        out = pixels(inpaint(client, family, init, inpaint_full_res=full_res, inpaint_full_res_padding=8))
        assert out.shape == init.shape
        assert np.abs(outside(out) - outside(init)).max() <= 2, full_res  # A1111's overlay: the original pixels
        inside = out[20:44, 20:44].astype(np.int16) - init[20:44, 20:44]
        assert np.abs(inside).mean() > 5, full_res  # and the masked part was repainted


def test_every_masked_content_mode_starts_elsewhere_and_keeps_the_outside(client, family):
    init = picture()
    outs = [pixels(inpaint(client, family, init, inpainting_fill=fill)) for fill in (0, 1, 2, 3)]
    for out in outs:
        assert np.abs(outside(out) - outside(init)).max() <= 2
    centre = [out[24:40, 24:40].astype(np.int16) for out in outs]
    assert all(np.abs(centre[a] - centre[b]).mean() > 2 for a in range(4) for b in range(a + 1, 4))


def test_an_inverted_mask_keeps_the_inside_and_the_infotext_names_the_mask_fields(client, family):
    init = picture()
    r = inpaint(client, family, init, inpainting_mask_invert=1, mask_blur=0)
    out = pixels(r)
    inner = (slice(24, 40), slice(24, 40))
    assert np.abs(out[inner].astype(np.int16) - init[inner]).max() <= 2
    assert np.abs(outside(out) - outside(init)).mean() > 5
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Mask blur: 0" in text and "Masked content: original" in text and "Inpaint area: Whole picture" in text


@pytest.mark.parametrize("config, pipeline", [("demo-flux", "FluxInpaintPipeline"),
                                              ("demo-sd3", "StableDiffusion3InpaintPipeline"), ("demo", None)])
def test_our_init_image_latents_are_the_ones_each_pipeline_would_encode(config, pipeline):
    """The latent fills and the latent resize mode hand the pipeline latents we encoded: they must be what it
    encodes itself (SD 3.5's and FLUX's autoencoders subtract a shift before scaling; SD's has none)."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    from handlers.generation.init_images import encode
    from loaders.models.families import config_dir

    torch.manual_seed(0)
    fake = type("Pipe", (), {})()
    fake.vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir(config) / "vae"))
    fake.image_processor = VaeImageProcessor(vae_scale_factor=8)
    image = Image.fromarray(picture())
    ours = encode(fake, [image], [torch.Generator().manual_seed(7)])
    tensor, seeded = fake.image_processor.preprocess([image]), torch.Generator().manual_seed(7)
    if pipeline is None:  # SD's img2img scales what it encodes, with no shift
        theirs = retrieve_latents(fake.vae.encode(tensor), seeded) * fake.vae.config.scaling_factor
    else:
        theirs = getattr(diffusers, pipeline)._encode_vae_image(fake, tensor, generator=seeded)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_latent_resize_mode_runs_on_the_flow_families_at_the_asked_size(client, family):
    init = picture(32, 32)
    body = {"init_images": [b64_png(init)], "denoising_strength": 0.5, "steps": 4, "width": 96, "height": 96}
    latent = pixels(generate(client, family, "img2img", resize_mode=3, **body))
    plain = pixels(generate(client, family, "img2img", resize_mode=0, **body))
    assert latent.shape == plain.shape == (96, 96, 3)  # not the model's default size (SD 3.5's pipeline's)
    assert np.abs(latent - plain).mean() > 2  # upscaled latents, not upscaled pixels


def hires(client, family: str, **body):
    fields = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.5, **body}
    return generate(client, family, **fields)


def test_hires_fix_makes_the_hires_size_from_the_first_pass_with_each_upscaler_kind(client, family):
    plain = pixels(generate(client, family))
    upscaled = np.asarray(Image.fromarray(plain.astype(np.uint8)).resize((96, 96), Image.LANCZOS), np.int16)
    r = hires(client, family, denoising_strength=0.1)
    light = pixels(r)
    assert light.shape == (96, 96, 3)
    strong = pixels(hires(client, family, denoising_strength=0.9))
    # the second pass starts from the upscaled first-pass picture: a light one stays near it, a strong one not
    assert np.abs(light - upscaled).mean() < np.abs(strong - upscaled).mean()
    latent = pixels(hires(client, family, hr_upscaler="Latent"))
    assert latent.shape == (96, 96, 3) and np.abs(latent - pixels(hires(client, family))).mean() > 2
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Hires upscale: 1.5" in text and "Hires resize: 96x96" in text and "Size: 96x96" in text


def test_the_hires_pass_has_its_own_prompt_and_guidance(client, family):
    """(The tiny random models follow their prompt only a little: a mean change of 1.5 levels is well above the
    under 0.8 of the same request run twice.)"""
    def second(**body):
        return hires(client, family, steps=4, denoising_strength=0.75, **body)

    base = pixels(second())
    assert np.abs(pixels(second()) - base).mean() < 0.8
    assert np.abs(pixels(second(hr_prompt="zebra stripes on a purple wall")) - base).mean() > 1.5
    r = second(hr_cfg=4.0, hr_negative_prompt="blurry")  # Forge's hires CFG (real guidance for FLUX)
    assert np.abs(pixels(r) - base).mean() > 1.5
    assert "Hires CFG Scale: 4" in json.loads(r.json()["info"])["infotexts"][0]
    if family == "flux":  # FLUX.1-dev's guidance input, Forge's hr_distilled_cfg
        r = second(hr_distilled_cfg=9.0)
        assert np.abs(pixels(r) - base).mean() > 1.5
        assert "Hires Distilled CFG Scale: 9" in json.loads(r.json()["info"])["infotexts"][0]


def test_what_the_flow_families_cannot_do_in_a_hires_pass_is_a_422_naming_it(client, family):
    cases = [({"hr_sampler_name": "DPM++ 2M"}, "hr_sampler_name"), ({"hr_scheduler": "Karras"}, "hr_scheduler"),
             ({"hr_resize_x": 104, "hr_resize_y": 104}, "hr_resize_x")]  # 8 × 13: both need multiples of 16
    if family == "sd3":  # no distilled guidance input
        cases.append(({"hr_distilled_cfg": 5.0}, "hr_distilled_cfg"))
    for body, field in cases:
        r = hires(client, family, **body)
        assert r.status_code == 422 and field in r.text and FAMILIES[family][1] in r.text, r.text


def test_forges_hr_cfg_sets_the_hires_pass_guidance_on_a_unet_family_too(client):
    def second(**body):
        payload = {"prompt": "a cute dog", "width": 64, "height": 64, "steps": 4, "seed": 2, "cfg_scale": 7.0,
                   "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.75, **body}
        return client.post("/sdapi/v1/txt2img", json=payload, headers=auth())

    base = pixels(second(hr_cfg=7.0))  # the first pass's cfg_scale, what an unset hr_cfg uses (A1111)
    r = second(hr_cfg=1.0)
    assert np.abs(pixels(r) - base).mean() > 1.5
    assert "Hires CFG Scale: 1," in json.loads(r.json()["info"])["infotexts"][0]
