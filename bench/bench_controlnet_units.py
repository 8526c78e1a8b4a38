"""Added cost of each ControlNet unit kind on the demo model (64×64, 2 steps, CPU unless EASEL_DEVICE says).

Kinds: ControlNet (one / two units), reference_only/adain/adain+attn, IP-Adapter (plain, plus; with the tiny
CLIP vision encoder), T2I-Adapter; with `--family sdxl`, on the demo SDXL checkpoint: an SDXL ControlNet,
ControlNet-Union ProMax (a known control type, and "Unknown") and a Control-LoRA (whose cold load merges its deltas
into the UNet). Prints JSON: for each kind, load_s of its first request (cold: the model file
and, for IP-Adapter, its image encoder load) and of later ones
(warm), the median generate_s, and the added generate_s over the same request without units; and the median
seconds of `POST /controlnet/detect`'s work (the preprocessor alone, at its default 512 px) for a few weight-free
modules and the model-based ones (controlnet-aux's networks and the ones written here, with random weights: the same
cost as trained ones; inpaint_only+lama runs at its fixed 256 px).
    .venv/bin/python bench/bench_controlnet_units.py [--runs 3] [--family sd15|sdxl]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from functions.wiring import build_services
from handlers.generation.controlnet_listing import DetectRequest, detect
from handlers.generation.generate import execute_job
from handlers.jobs import Job
from handlers.schemas import Txt2ImgRequest
from handlers.settings import Settings
from loaders.adapters.annotator_runners import RUNNERS as ANNOTATOR_RUNNERS
from loaders.adapters.own_annotator_runners import RUNNERS as OWN_RUNNERS
from loaders.demo.annotators import install_annotator
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, demo_controlnet_bytes, install_demo_controlnet
from loaders.demo.controlnet_kinds import demo_control_lora_bytes, demo_union_bytes
from loaders.demo.ipadapter import demo_image_encoder_bytes, demo_ip_adapter_bytes
from loaders.demo.t2i_adapter import demo_t2i_adapter_bytes
from loaders.demo.model import install_demo
from loaders.demo.names import DEMO_NAMES
from loaders.storage.store import LocalStore


def picture() -> str:
    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).rectangle([16, 16, 47, 47], fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def kinds(image: str) -> dict[str, list[dict]]:
    cn = {"module": "canny", "model": DEMO_CONTROLNET_NAME, "image": image}
    ref = {"model": "None", "image": image}
    return {"plain": [], "controlnet_canny": [cn], "controlnet_none_module": [{**cn, "module": "none"}],
            "two_controlnet_units": [cn, {**cn, "module": "invert"}],
            "controlnet_softedge_hed": [{**cn, "module": "softedge_hed"}],  # a model-based preprocessor (random HED)
            "reference_only": [{**ref, "module": "reference_only"}],
            "reference_adain": [{**ref, "module": "reference_adain"}],
            "reference_adain+attn": [{**ref, "module": "reference_adain+attn"}],
            "ip_adapter": [{"module": "ip-adapter_clip_sd15", "model": "ip-adapter_bench", "image": image}],
            "ip_adapter_plus": [{"module": "ip-adapter_clip_sd15", "model": "ip-adapter-plus_bench", "image": image}],
            "t2i_adapter_canny": [{**cn, "model": "t2iadapter_bench"}]}


def xl_kinds(image: str) -> dict[str, list[dict]]:
    cn = {"module": "canny", "model": "xl_bench", "image": image}
    union = {**cn, "model": "controlnet-union-promax_bench"}
    return {"plain": [], "sdxl_controlnet_canny": [cn],
            "union_hard_edge": [{**union, "union_control_type": "Hard Edge"}], "union_unknown_type": [union],
            "control_lora_canny": [{**cn, "model": "control-lora-canny_bench"}]}


def install_xl(store) -> None:
    """The demo SDXL checkpoint and the tiny SDXL ControlNet, ControlNet-Union ProMax and Control-LoRA."""
    install_demo(store, "demo-sdxl")
    folder = "public/models/ControlNet/"
    store.put_bytes(folder + "xl_bench.safetensors", demo_controlnet_bytes(family="demo-sdxl"))
    store.put_bytes(folder + "controlnet-union-promax_bench.safetensors", demo_union_bytes())
    store.put_bytes(folder + "control-lora-canny_bench.safetensors", demo_control_lora_bytes())


def install_adapters(store) -> None:
    """The tiny IP-Adapters (plain, plus), their CLIP vision encoder and a T2I-Adapter, for the demo UNet."""
    folder = "public/models/ControlNet/"
    store.put_bytes(folder + "ip-adapter_bench.safetensors", demo_ip_adapter_bytes())
    store.put_bytes(folder + "ip-adapter-plus_bench.safetensors", demo_ip_adapter_bytes(plus=True))
    store.put_bytes(folder + "t2iadapter_bench.safetensors", demo_t2i_adapter_bytes())
    store.put_bytes("public/models/clip_vision/clip_h.safetensors", demo_image_encoder_bytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    args = ap.parse_args()
    xl = args.family == "sdxl"
    root = Path(tempfile.mkdtemp())
    store = LocalStore(root / "data")
    install_demo(store)
    install_demo_controlnet(store)
    install_adapters(store)
    runners = [*ANNOTATOR_RUNNERS.values(), *OWN_RUNNERS.values()]
    for filename in sorted({f for _, files, *_ in runners for f in files}):
        install_annotator(store, filename)  # random weights: the cost is the real network's
    if xl:
        install_xl(store)
    services = build_services(Settings(store=f"file://{root / 'data'}", cache_dir=root / "cache"), store=store)
    image = picture()
    checkpoint = {"sd_model_checkpoint": DEMO_NAMES["demo-sdxl"]} if xl else {}
    warmup = Txt2ImgRequest(prompt="x", width=64, height=64, steps=2, seed=1, override_settings=checkpoint)
    execute_job(Job(user="bench", mode="txt2img", request=warmup, task_id="warmup"), services)  # checkpoint load
    result = {}
    for label, units in (xl_kinds if xl else kinds)(image).items():
        loads, gens = [], []
        for k in range(args.runs + 1):
            scripts = {"controlnet": {"args": units}} if units else {}
            req = Txt2ImgRequest(prompt="x", width=64, height=64, steps=2, seed=1, alwayson_scripts=scripts,
                                 override_settings=checkpoint)
            timings = execute_job(Job(user="bench", mode="txt2img", request=req, task_id=f"{label}{k}"),
                                  services).parameters.timings
            loads.append(timings.load_s)
            if k:
                gens.append(timings.generate_s)
        result[label] = {"load_s_first": round(loads[0], 4), "load_s_warm_median": round(statistics.median(loads[1:]), 4),
                         "generate_s_median": round(statistics.median(gens), 4)}
    plain = result["plain"]["generate_s_median"]
    for label, row in result.items():
        row["added_generate_s"] = round(row["generate_s_median"] - plain, 4)
    detect_s = {}
    for module in ("canny", "lineart_standard", "shuffle", "color", "mlsd", "softedge_hed", "softedge_pidinet",
                   "lineart_realistic", "lineart_anime", "softedge_teed", "seg_anime_face", "lineart_anime_denoise",
                   "inpaint_only+lama"):
        masks = [image] if module == "inpaint_only+lama" else []  # the white around the square is the hole
        body = DetectRequest(controlnet_module=module, controlnet_input_images=[image], controlnet_masks=masks)
        spent = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            detect(services, "bench", body)
            spent.append(time.perf_counter() - t0)
        detect_s[module] = round(statistics.median(spent), 4)
    print(json.dumps({"units": result, "detect_s_median": detect_s}, indent=1))


if __name__ == "__main__":
    main()
