"""Loopback (A1111 scripts/loopback.py, img2img only): each output is the next loop's init image, the
denoising strength moving from the request's to the final one along a curve.

script_args: [loops, final_denoising_strength, denoising_curve ("Aggressive"|"Linear"|"Lazy"),
append_interrogation ("None" | "CLIP" | "DeepBooru": each loop's prompt is the request's + ", " + that
interrogator's caption of the loop's init image, as A1111)]
"""

from __future__ import annotations

import math

from handlers.generation import deepbooru
from handlers.generation import interrogate as interrogation
from handlers.generation.scripts import grids
from handlers.generation.scripts.base import Result, ScriptRun, b64_png
from loaders.errors import InvalidRequest
from loaders.storage.images import load_image

TITLE = "Loopback"
MODES = ("img2img",)
ARGS = [("Loops", 4), ("Final denoising strength", 0.5), ("Denoising strength curve", "Linear"),
        ("Append interrogated prompt at each iteration", "None")]


def strength_at(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        amount = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        amount = 1 - math.cos(progress * math.pi * 0.5)
    else:
        amount = progress
    return initial + (final - initial) * amount


def run(s: ScriptRun) -> Result:
    loops = s.arg(0, "loops", 4, int)
    final = s.arg(1, "final_denoising_strength", 0.5, float)
    curve = s.arg(2, "denoising_curve", "Linear", str)
    interrogate = s.arg(3, "append_interrogation", "None", str)
    if not 1 <= loops <= 32:
        raise InvalidRequest(f"`script_args[0]` (loops) must be 1..32, not {loops}")
    if not 0 <= final <= 1:
        raise InvalidRequest(f"`script_args[1]` (final_denoising_strength) must be 0..1, not {final}")
    if curve not in ("Aggressive", "Linear", "Lazy"):
        raise InvalidRequest(f"`script_args[2]` (denoising_curve) must be Aggressive, Linear or Lazy, not {curve!r}")
    if interrogate not in ("None", "CLIP", "DeepBooru"):
        raise InvalidRequest(f"`script_args[3]` (append_interrogation) must be None, CLIP or DeepBooru, "
                             f"not {interrogate!r}")
    s.plan(loops * s.req.n_iter, f"{loops} loops × {s.req.n_iter} batches")
    seed = s.fixed_seed(s.req.seed)
    initial = s.req.denoising_strength
    extra = {"Final denoising strength": f"{final:g}", "Denoising curve": curve}
    result, history = Result(), []
    for n in range(s.req.n_iter):
        init, strength, fill, last = list(s.req.init_images), initial, s.req.inpainting_fill, None
        for i in range(loops):
            prompt = {} if interrogate == "None" else {"prompt": interrogated_prompt(s, last, init[0], interrogate)}
            sub = s.variant(f"loopback {i + 1}", init_images=init, denoising_strength=strength, seed=seed,
                            batch_size=1, n_iter=1, inpainting_fill=fill, **prompt)
            generated = s.process(sub)
            seed += 1  # A1111: the next loop's seed is this one's + 1
            strength = strength_at(i + 1, loops, initial, final, curve)
            last = generated.images[0]
            init, fill = [b64_png(last)], 1  # later loops keep the masked content ("original")
            result.seeds += generated.seeds
            text = _with(generated.infotexts[0], extra)
            if s.req.n_iter == 1:
                history.append(last)
                result.images.append(last)
                result.infotexts.append(text)
        if s.req.n_iter > 1:
            history.append(last)
            result.images.append(last)
            result.infotexts.append(text)
    if len(history) > 1:
        result.grids = [grids.image_grid(history, rows=1)]
        result.grid_infotexts = [result.infotexts[0]]
    return result


def interrogated_prompt(s: ScriptRun, last, first_init: str, interrogator: str) -> str:
    """A1111: `p.prompt = f"{original_prompt}, " if original_prompt else ""` + the interrogation of the loop's
    init image (the request's for the first loop, the previous output after)."""
    image = last if last is not None else load_image(first_init, "init_images[0]", store=s.services.store,
                                                       user=s.job.user)
    tagger = interrogation.interrogate_clip if interrogator == "CLIP" else deepbooru.interrogate
    caption = tagger(s.services, s.job.user, image.convert("RGB"))
    return (f"{s.req.prompt}, " if s.req.prompt else "") + caption


def _with(infotext: str, extra: dict) -> str:
    return infotext + "".join(f", {k}: {v}" for k, v in extra.items())
