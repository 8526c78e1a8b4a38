"""GPU benchmark: the vanilla-diffusers anchor and easel's own path, in ONE run on the same GPU.

A script, not a test. Prints one JSON line per case and saves them all to bench/results/<date>-<gpu>.json.

  python bench/bench_gpu.py            # on a CUDA machine (see bench/README.md); ~6-9 min, mostly compiles
  TINY=1 python bench/bench_gpu.py     # CPU smoke run: tiny models, 64², 2 steps (tests/test_bench_smoke.py)
  PARTS=anchor,sd15 python bench/bench_gpu.py   # a subset: anchor,sd15,concurrent,sdxl,first,switch

Cases (random weights: same FLOPs as real checkpoints):
  anchor      bench/anchor_diffusers.py in-process: eager fp16 SD-1.5 b1/b4 and SDXL 1024² 30 steps
  sd15        easel request path (execute_job: resolve, load, generate, persist PNG) SD-1.5 512² 25 steps
              Euler CFG 7.5, batch 1, warm; plus the same pipeline called directly (request-path overhead)
  concurrent  8 threads sending those requests at once (batching on): images/s
  sdxl        SDXL architecture 1024² 30 steps through easel's fast path (pipeline level, no text encoders)
  first       a fresh process: start → first image (eager, before any compile), then warm-up → first compiled
              image; with the bucket's compile cache empty, then filled (fresh local caches each time)
  switch      switch to another checkpoint: from the local file cache, then from S3 (moto server)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

STARTED = time.time()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

TINY = os.environ.get("TINY") == "1"
DEV = "cpu" if TINY else "cuda"
SIZE, STEPS, XL_SIZE, XL_STEPS = (64, 2, 64, 2) if TINY else (512, 25, 1024, 30)
PARTS = os.environ.get("PARTS", "anchor,sd15,concurrent,sdxl,first,switch").split(",")
RESULTS: list[dict] = []


def emit(**kw) -> dict:
    kw["device"] = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    RESULTS.append(kw)
    print(json.dumps(kw), flush=True)
    return kw


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- models with random weights

def sd15_modules():
    """SD-1.5's UNet/VAE/CLIP shapes (the anchor's), or tiny ones; vocab ids from the demo tokenizer fit."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513, max_position_embeddings=77)
    if TINY:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                          num_attention_heads=4, vocab_size=1000, **tok))
    else:
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                    cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, vocab_size=49408, hidden_act="quick_gelu", **tok))
    return unet, vae, te


def write_bench_family(root: Path, unet, vae, te) -> Path:
    """A diffusers config folder for these modules: the demo's tokenizer/scheduler + the modules' configs."""
    import shutil

    from loaders.models.families import config_dir

    folder = root / "bench-sd15"
    shutil.copytree(config_dir("demo"), folder)
    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    te.config.save_pretrained(folder / "text_encoder")
    return folder


def write_checkpoint(path: Path, unet, vae, te, family: str, seed: int) -> Path:
    """An A1111 single-file checkpoint (LDM key names, fp16 on GPU) with fresh random weights."""
    from safetensors.torch import save_file

    from loaders.models import ldm_keys

    torch.manual_seed(seed)
    for m in (unet, vae, te):
        for p in m.parameters():
            p.data.normal_(0, 0.02)
    dtype = torch.float32 if TINY else torch.float16
    state = {**ldm_keys.unet_to_ldm(unet.state_dict(), dict(unet.config)),
             **ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config)),
             **ldm_keys.clip_to_ldm(te.state_dict())}
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}, str(path),
              metadata={"easel.family": family})
    return path


def sdxl_pipeline():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    if TINY:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4),
                                    cross_attention_dim=64, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
                                    use_linear_projection=True, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
        dims = (64, 32)
    else:
        with torch.device(DEV):
            unet = UNet2DConditionModel(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                                        cross_attention_dim=2048, addition_embed_type="text_time",
                                        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                                        use_linear_projection=True)
            vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=1024)
        dims = (2048, 1280)
    with torch.device("cpu"):
        sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=sched).to(DEV, torch.float32 if TINY else torch.float16)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dims


# ---------------------------------------------------------------- the cases

def run_anchor():
    """The shared anchor, in this process (same GPU, same run), its JSON lines collected."""
    os.environ["SDXL"] = "0" if TINY else "1"
    import importlib.util

    spec = importlib.util.spec_from_file_location("anchor_diffusers", Path(__file__).parent / "anchor_diffusers.py")
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if TINY:
            tiny_anchor(anchor)  # batch 1, one timed run: the smoke test has a minute
        else:
            anchor.main()
    for line in out.getvalue().splitlines():
        if line.startswith("{"):
            emit(part="anchor", **json.loads(line))
    if DEV == "cuda":
        torch.cuda.empty_cache()


def tiny_anchor(anchor):
    """The anchor's own main(), cut to its batch-1 case with one timed run."""
    from diffusers import StableDiffusionPipeline

    unet, vae, te = anchor.sd15_pipeline()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=None, unet=unet, scheduler=anchor.scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ids = torch.randint(0, te.config.vocab_size, (1, 77))
    with torch.no_grad():
        e = te(ids)[0]
    anchor.time_case("sd15_eager", pipe, dict(prompt_embeds=e, negative_prompt_embeds=e.clone(), guidance_scale=7.5),
                     STEPS, SIZE, 1, runs=1)


def settings_for(data: Path, cache: Path, **extra):
    from handlers.settings import Settings

    options = dict(fast_buckets=f"{SIZE}x{SIZE}", fast_batch_sizes="1,8", batching="on", batch_wait_ms=10)
    return Settings(store=f"file://{data}", device=DEV, cache_dir=cache, tokens="bench=bench-token",
                    **{**options, **extra})


def bench_builder(config: Path):
    """easel's build_pipeline, pointed at the bench's config folder (the families ship real ones)."""
    from diffusers import StableDiffusionPipeline

    def build(path, family, device):
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(config), local_files_only=True, device=device,
            torch_dtype=torch.float16 if device == "cuda" else torch.float32,
            safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    return build


def request(user="bench", seed=1, checkpoint="bench-a.safetensors", **fields):
    from handlers.jobs import Job
    from handlers.schemas import Txt2ImgRequest

    req = Txt2ImgRequest(prompt="a photo of a cat", negative_prompt="blurry", steps=STEPS, width=SIZE, height=SIZE,
                         cfg_scale=7.5, sampler_name="Euler", seed=seed, send_images=False,
                         override_settings={"sd_model_checkpoint": checkpoint}, **fields)
    return Job(user=user, mode="txt2img", request=req, task_id=f"b{seed}-{time.monotonic_ns()}")


def timed_request(services, **kw) -> tuple[float, object]:
    from handlers.generation.generate import execute_job

    sync()
    t0 = time.perf_counter()
    r = execute_job(request(**kw), services)
    sync()
    return time.perf_counter() - t0, r


def run_sd15(services, runs: int):
    from handlers.generation.warmup import warm_checkpoint

    t0 = time.perf_counter()
    report = warm_checkpoint(services, "bench-a.safetensors")
    emit(part="sd15", case="warm_up", load_s=report.load_s, total_s=round(time.perf_counter() - t0, 3),
         buckets=report.buckets)
    timed_request(services, seed=0)
    walls, gens = [], []
    for i in range(runs):
        wall, r = timed_request(services, seed=i)
        walls.append(wall)
        gens.append(r.parameters.timings.generate_s)
    model, _ = services.models.checkpoint(services.store.stat("public/models/Stable-diffusion/bench-a.safetensors"))
    direct = []
    for i in range(runs):  # the same work without the request path: the pipeline called directly
        sync()
        t0 = time.perf_counter()
        model.pipe(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=STEPS, width=SIZE,
                   height=SIZE, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(i))
        sync()
        direct.append(time.perf_counter() - t0)
    wall, d = statistics.median(walls), statistics.median(direct)
    emit(part="sd15", case="easel_request_b1", size=SIZE, steps=STEPS, median_s=round(wall, 4),
         generate_s=round(statistics.median(gens), 4), direct_pipeline_s=round(d, 4),
         request_overhead_ratio=round(wall / d, 3))


def run_concurrent(services, clients: int = 8, rounds: int = 1 if TINY else 4):
    from handlers.generation.generate import execute_job

    errors = []

    def client(c):
        for k in range(rounds):
            try:
                execute_job(request(seed=1000 * c + k), services)
            except Exception as e:  # reported, not raised: one failure should not hide the figures
                errors.append(repr(e))

    before = list(services.batcher.batches)
    sync()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sync()
    wall = time.perf_counter() - t0
    batches = services.batcher.batches[len(before):]
    emit(part="concurrent", case=f"easel_{clients}_concurrent", images=clients * rounds, wall_s=round(wall, 3),
         images_per_s=round(clients * rounds / wall, 2), batches=batches, errors=errors[:3])


def run_sdxl():
    from loaders.speed import fastpath
    from loaders.speed.fastpath import FastPathConfig

    pipe, (ctx, pooled) = sdxl_pipeline()
    dtype = pipe.unet.dtype
    pe = torch.randn(1, 77, ctx, device=DEV, dtype=dtype)
    pp = torch.randn(1, pooled, device=DEV, dtype=dtype)

    def inputs(b):
        return dict(prompt_embeds=pe.repeat(b, 1, 1), negative_prompt_embeds=pe.repeat(b, 1, 1),
                    pooled_prompt_embeds=pp.repeat(b, 1), negative_pooled_prompt_embeds=pp.repeat(b, 1))

    t0 = time.perf_counter()
    if DEV == "cuda":
        fastpath.apply(pipe, "sdxl", DEV, FastPathConfig(buckets=((XL_SIZE, XL_SIZE),), batch_sizes=(1,)))
        fastpath.warm_bucket(pipe, XL_SIZE, XL_SIZE, (1,), inputs=inputs)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(1 if TINY else 3):
        sync()
        t0 = time.perf_counter()
        pipe(**inputs(1), num_inference_steps=XL_STEPS, width=XL_SIZE, height=XL_SIZE, guidance_scale=5.0,
             output_type="pil", generator=torch.Generator("cpu").manual_seed(0))
        sync()
        times.append(time.perf_counter() - t0)
    emit(part="sdxl", case="easel_fastpath_sdxl", size=XL_SIZE, steps=XL_STEPS, compile_s=round(compile_s, 2),
         median_s=round(statistics.median(times), 4))
    del pipe
    if DEV == "cuda":
        torch.cuda.empty_cache()


def run_first_image(data: Path, config: Path):
    """Fresh processes: start → first image, with the bucket's compile cache empty, then filled."""
    for label in ("cache_cold", "cache_warm"):
        with tempfile.TemporaryDirectory() as local:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{local}/inductor", "TRITON_CACHE_DIR": f"{local}/triton",
                   "BENCH_CHILD": "first", "BENCH_DATA": str(data), "BENCH_CONFIG": str(config),
                   "BENCH_CACHE": f"{local}/files"}
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
            wall = time.perf_counter() - t0
            lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
            child = lines[-1] if lines else {"error": out.stderr[-2000:]}
            emit(part="first", case=f"first_image_{label}", process_wall_s=round(wall, 3), **child)


def first_image_child():
    """Runs in the child: what a new serving process does before its first answer."""
    from functions.wiring import build_services
    from handlers.generation.warmup import warm_checkpoint

    data, config = Path(os.environ["BENCH_DATA"]), Path(os.environ["BENCH_CONFIG"])
    services = build_services(settings_for(data, Path(os.environ["BENCH_CACHE"]), fast_batch_sizes="1",
                                           fast_warm="off", batching="off"),
                              builder=bench_builder(config))
    # 1. serve at once: the first image runs eager while nothing is compiled (no warm-up started yet)
    wall, r = timed_request(services, seed=4)
    eager_at = time.time() - STARTED
    # 2. then warm (compile or restore from the bucket's cache) and serve the compiled path
    t0 = time.perf_counter()
    report = warm_checkpoint(services, "bench-a.safetensors")
    warm_s = time.perf_counter() - t0
    wall2, _ = timed_request(services, seed=5)
    print(json.dumps({"first_image_eager_since_start_s": round(eager_at, 3), "first_request_eager_s": round(wall, 3),
                      "load_s": r.parameters.timings.load_s, "warm_up_s": round(warm_s, 3), "buckets": report.buckets,
                      "since_process_start_s": round(time.time() - STARTED, 3),
                      "first_compiled_request_s": round(wall2, 3)}), flush=True)


def run_switch(services, data: Path, builder):
    """Another checkpoint after a warm one: from the local file, then from S3 (moto's server)."""
    wall, r = timed_request(services, seed=7, checkpoint="bench-b.safetensors")
    emit(part="switch", case="switch_local_file", load_s=r.parameters.timings.load_s, request_s=round(wall, 3))
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        emit(part="switch", case="switch_from_s3", skipped="moto not installed")
        return
    import boto3

    from functions.wiring import build_services
    from loaders.storage.store import S3Store

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    client.create_bucket(Bucket="bench")
    s3 = S3Store("bench", client=client)
    s3.put_file("public/models/Stable-diffusion/bench-c.safetensors",
                data / "public/models/Stable-diffusion/bench-b.safetensors")
    with tempfile.TemporaryDirectory() as cache:  # an empty download cache: load_s = download + build
        s3_services = build_services(settings_for(data, Path(cache), fast_warm="off", compile_cache=False),
                                     store=s3, builder=builder)
        wall, r = timed_request(s3_services, seed=8, checkpoint="bench-c.safetensors")
        size = (data / "public/models/Stable-diffusion/bench-b.safetensors").stat().st_size
        emit(part="switch", case="switch_from_s3_moto", size_mb=size >> 20, load_s=r.parameters.timings.load_s,
             request_s=round(wall, 3), note="moto serves from one Python process: an upper bound, not S3")
    server.stop()


def main():
    if "anchor" in PARTS:
        run_anchor()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from functions.wiring import build_services

        with torch.device(DEV if not TINY else "cpu"):
            unet, vae, te = sd15_modules()
        family = "bench-sd15"
        config = write_bench_family(tmp, unet, vae, te)
        models = tmp / "data/public/models/Stable-diffusion"
        models.mkdir(parents=True)
        write_checkpoint(models / "bench-a.safetensors", unet, vae, te, _family_label(family), seed=1)
        write_checkpoint(models / "bench-b.safetensors", unet, vae, te, _family_label(family), seed=2)
        del unet, vae, te
        builder = bench_builder(config)
        # no compile cache here: the first-image children measure it (cold, then warm) on their own keys
        services = build_services(settings_for(tmp / "data", tmp / "cache", fast_warm="off", compile_cache=False),
                                  builder=builder)
        if "sd15" in PARTS or "concurrent" in PARTS:
            run_sd15(services, runs=1 if TINY else 5)
        if "concurrent" in PARTS:
            run_concurrent(services)
        if "switch" in PARTS:
            run_switch(services, tmp / "data", builder)
        del services
        if "first" in PARTS:
            run_first_image(tmp / "data", config)
    if "sdxl" in PARTS:
        run_sdxl()
    summarize()


def _family_label(family: str) -> str:
    """The family the checkpoint declares: one the loader accepts (the demo config in this branch)."""
    from loaders.models.families import config_dir

    for candidate in ("sd15", "demo"):
        try:
            config_dir(candidate)
            return candidate
        except KeyError:
            continue
    return family


def summarize():
    by = {(r.get("part"), r.get("case"), r.get("batch")): r for r in RESULTS}
    anchor_b1 = by.get(("anchor", "sd15_eager", 1), {}).get("median_s")
    anchor_xl = by.get(("anchor", "sdxl_eager", 1), {}).get("median_s")
    easel_b1 = by.get(("sd15", "easel_request_b1", None), {}).get("median_s")
    easel_xl = by.get(("sdxl", "easel_fastpath_sdxl", None), {}).get("median_s")
    summary = {"anchor_eager_b1_s": anchor_b1, "easel_b1_s": easel_b1, "anchor_sdxl_s": anchor_xl,
               "easel_sdxl_s": easel_xl,
               "speedup_b1": round(anchor_b1 / easel_b1, 2) if anchor_b1 and easel_b1 else None,
               "speedup_sdxl": round(anchor_xl / easel_xl, 2) if anchor_xl and easel_xl else None,
               "targets": {"b1_s": 0.09, "images_per_s": 12, "sdxl_s": 0.8, "first_image_s": 5,
                           "switch_local_s": 1.5, "switch_store_2gb_s": 3}}
    emit(part="summary", **summary)
    default = "" if TINY else str(Path(__file__).parent / "results")
    out_dir = os.environ.get("RESULTS_DIR", default)
    if out_dir:
        out_dir = Path(out_dir)
        from loaders.speed.compile_cache import slug

        out_dir.mkdir(parents=True, exist_ok=True)
        gpu = slug(torch.cuda.get_device_name()) if DEV == "cuda" else "cpu"
        path = out_dir / f"{datetime.now(timezone.utc):%Y-%m-%d}-{gpu}{'-tiny' if TINY else ''}.json"
        path.write_text(json.dumps({"torch": torch.__version__, "results": RESULTS}, indent=1))
        print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    if os.environ.get("BENCH_CHILD") == "first":
        first_image_child()
    else:
        main()
