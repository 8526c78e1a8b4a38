"""The CUDA fast path: half precision, SDPA, channels_last, torch.compile (CUDA graphs) per shape bucket.

Applied once to a freshly built pipeline (see `accelerated`); the eager CPU path is never touched. What it
does and why (anchors in shared/PERF.md: vanilla eager 0.77 s, compile + CUDA graphs 0.176 s per image):

- UNet and text encoder in fp16 (or bf16); the VAE in bf16 (or fp32) behind a casting shim, because the
  fp16 SD/SDXL VAE overflows to NaN on some latents and bf16 has fp32's range at fp16's speed.
- SDPA attention (diffusers' default AttnProcessor2_0, asserted here), channels_last weights.
- torch.compile(mode="reduce-overhead") of UNet.forward and VAE.decode: inductor kernels plus CUDA graphs,
  which remove the per-kernel launch cost that makes eager SD launch-bound (32 it/s on an H200). Graphs are
  recorded per exact shape, so compiled calls are limited to configured shape buckets through
  `ShapeDispatch`; other shapes run eager and nothing compiles inside a request.
- The step loop does not sync: diffusers' Euler-family schedulers keep sigmas on the CPU already and index
  timesteps once per call. (Moving timesteps to the CPU too would change the UNet's input device between
  warm-up and the request paths, i.e. a second set of graphs, for one `nonzero()` per image.)
- Opt-ins: fused QKV (breaks LoRA loading onto to_q/k/v, so off by default), fp8 weights on Hopper/Ada
  (torchao), a tiny VAE (AutoencoderTiny weights from the bucket) per request or by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from loaders.speed import shape_dispatch
from loaders.speed.defaults import DEFAULT_BUCKETS  # noqa: F401 (re-exported: the fast path's default)
from loaders.speed.shape_dispatch import ShapeDispatch

log = logging.getLogger(__name__)
FASTPATH_VERSION = "1"  # bump when compiled graphs change for the same settings (part of the cache key)


@dataclass(frozen=True)
class FastPathConfig:
    enabled: bool = True
    dtype: str = "fp16"                      # fp16 | bf16: UNet and text encoder
    vae_dtype: str = "bf16"                  # bf16 | fp32: NaN-safe decode (fp16 VAEs overflow)
    compile: bool = True
    compile_mode: str = "reduce-overhead"    # CUDA graphs; "max-autotune" also graphs, compiles far longer
    buckets: tuple[tuple[int, int], ...] = ()  # (width, height) in pixels
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)  # images per pipeline call that get compiled graphs
    channels_last: bool = True
    fuse_qkv: bool = False
    fp8: bool = False

    def buckets_for(self, family: str) -> list[tuple[int, int]]:
        """SDXL is trained around 1024², SD-1.x/2.x around 512-768²: compile only what a family will serve."""
        big = family.startswith("sdxl")
        return [(w, h) for w, h in self.buckets if (w * h >= 768 * 768) == big or (w * h == 768 * 768)]

    def fingerprint(self) -> str:
        """What compiled artifacts depend on besides GPU, family and shape: torch build and these options."""
        import torch

        parts = {"torch": torch.__version__, "cuda": torch.version.cuda, "v": FASTPATH_VERSION,
                 **{k: v for k, v in asdict(self).items() if k not in ("enabled", "buckets")}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_buckets(text: str) -> tuple[tuple[int, int], ...]:
    """'512x512,768x512' → ((512, 512), (768, 512)); sizes must be multiples of 8."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        w, sep, h = item.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) % 8 or int(h) % 8:
            raise ValueError(f"shape buckets look like 512x768 (multiples of 8), not {item!r}")
        out.append((int(w), int(h)))
    return tuple(out)


@dataclass
class FastState:
    """What the fast path attached to one pipeline: its options, dispatchers and optional tiny VAE."""
    config: FastPathConfig
    family: str
    device: str
    dispatch: list[ShapeDispatch] = field(default_factory=list)
    tiny_vae: object | None = None
    warmed: set[tuple[int, int]] = field(default_factory=set)  # (width, height) buckets done

    def unet_batch_sizes(self) -> set[int]:
        # with classifier-free guidance the UNet sees the negative and positive halves in one batch
        return {b for b in self.config.batch_sizes} | {2 * b for b in self.config.batch_sizes}

    def padded_batch(self, n: int) -> int:
        """The smallest compiled batch size that holds n images (n itself when none does)."""
        fits = [b for b in sorted(self.config.batch_sizes) if b >= n]
        return fits[0] if fits and self.dispatch else n


def fast_state(pipe) -> FastState | None:
    return getattr(pipe, "_easel_fast", None)


def torch_compile_fn(mode: str | None, backend: str | Callable = "inductor") -> Callable[[Callable], Callable]:
    """torch.compile with static shapes (one graph per bucket) and the whole module as one graph."""
    import torch

    def compile_fn(fn: Callable) -> Callable:
        return torch.compile(fn, mode=mode if backend == "inductor" else None, backend=backend,
                             fullgraph=True, dynamic=False)

    return compile_fn


def _torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def apply(pipe, family: str, device: str, config: FastPathConfig,
          compile_fn: Callable[[Callable], Callable] | None = None) -> FastState:
    """Make `pipe` fast in place (CUDA-only steps are skipped elsewhere); returns the state it attached."""
    state = FastState(config, family, device)
    if device == "cuda":
        _cuda_numerics(pipe, config)
    if config.compile:
        if compile_fn is None:
            compile_fn = torch_compile_fn(config.compile_mode)
        _raise_recompile_limits(len(config.buckets) * len(config.batch_sizes) * 4)
        state.dispatch = install_dispatch(pipe, state, compile_fn)
    pipe._easel_fast = state
    return state


def _cuda_numerics(pipe, config: FastPathConfig) -> None:
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = _torch_dtype(config.dtype)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(dtype=dtype)
    if config.fuse_qkv:
        pipe.fuse_qkv_projections(unet=True, vae=False)
    else:
        pipe.unet.set_attn_processor(AttnProcessor2_0())  # SDPA (flash / memory-efficient kernels)
    if config.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    cast_vae(pipe.vae, _torch_dtype(config.vae_dtype), dtype)
    if config.fp8:
        try:
            quantize_fp8(pipe.unet)
        except RuntimeError as e:  # a setting the GPU cannot honour must not take serving down
            log.warning("fp8 requested but not applied: %s", e)


def cast_vae(vae, vae_dtype, latent_dtype) -> None:
    """Run the VAE in `vae_dtype` while the rest of the pipeline speaks `latent_dtype` (casts at the edges).

    Also clears `force_upcast` so SDXL pipelines stop moving the VAE to fp32 and back on every request.
    """
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    if vae_dtype == latent_dtype:
        return
    vae.to(dtype=vae_dtype)
    if "force_upcast" in vae.config:
        vae.register_to_config(force_upcast=False)
    decode, encode = vae.decode, vae.encode

    def decode_cast(z, return_dict: bool = True, generator=None):
        out = decode(z.to(vae_dtype), return_dict=return_dict, generator=generator)
        sample = (out.sample if return_dict else out[0]).to(latent_dtype)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def encode_cast(x, return_dict: bool = True):
        out = encode(x.to(vae_dtype), return_dict=return_dict)
        dist = out.latent_dist if return_dict else out[0]
        dist = DiagonalGaussianDistribution(dist.parameters.to(latent_dtype), dist.deterministic)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    vae.decode, vae.encode = decode_cast, encode_cast


def quantize_fp8(unet) -> None:
    """fp8 weights and activations for the UNet's linear layers (needs compute capability ≥ 8.9 and torchao)."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise RuntimeError("fp8 needs an Ada or Hopper GPU (compute capability 8.9+)")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
    except ImportError:
        raise RuntimeError("fp8 needs torchao installed in the image") from None
    quantize_(unet, Float8DynamicActivationFloat8WeightConfig())


def _raise_recompile_limits(graphs: int) -> None:
    """Every bucket × batch size is one entry on the same code object; the default limit (8) would silently
    send the rest to eager after the eighth."""
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, graphs + 8)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4 * (graphs + 8))


def install_dispatch(pipe, state: FastState, compile_fn: Callable[[Callable], Callable]) -> list[ShapeDispatch]:
    """Compiled UNet.forward and VAE.decode behind shape dispatchers (eager for anything not warmed)."""
    scale = getattr(pipe, "vae_scale_factor", 8)
    pixel_shapes = set(state.config.buckets)

    def latent_in_bucket(batches: set[int]) -> Callable[[tuple, dict], bool]:
        def check(args: tuple, kwargs: dict) -> bool:
            x = args[0] if args else kwargs.get("sample", kwargs.get("z"))
            if x is None or getattr(x, "ndim", 0) != 4:
                return False
            b, _, h, w = x.shape
            return b in batches and (w * scale, h * scale) in pixel_shapes

        return check

    runner = graph_thread()
    unet = shape_dispatch.install(pipe.unet, "forward", compile_fn, latent_in_bucket(state.unet_batch_sizes()),
                                  runner)
    decode = shape_dispatch.install(pipe.vae, "decode", compile_fn, latent_in_bucket(set(state.config.batch_sizes)),
                                    runner)

    def decode_without_generator(z, return_dict: bool = True, generator=None):
        # AutoencoderKL ignores `generator`; pipelines pass their list of torch.Generators, which the
        # compiled code would have to guard on (a new list per request = eager every time).
        return decode(z, return_dict=return_dict)

    pipe.vae.decode = decode_without_generator
    return [unet, decode]


_GRAPH_THREAD: shape_dispatch.OneThread | None = None
_GRAPH_THREAD_LOCK = threading.Lock()


def graph_thread() -> shape_dispatch.OneThread:
    """The process's one thread for compiled calls (CUDA-graph trees are per thread; pools are shared)."""
    global _GRAPH_THREAD
    with _GRAPH_THREAD_LOCK:
        if _GRAPH_THREAD is None:
            _GRAPH_THREAD = shape_dispatch.OneThread()
        return _GRAPH_THREAD


def warm_bucket(pipe, width: int, height: int, batch_sizes: tuple[int, ...], runs: int = 3,
                inputs: Callable[[int], dict] | None = None) -> None:
    """Compile and capture one (width, height) bucket for each batch size by running the pipeline.

    Three short runs per batch size: the first compiles, cudagraph trees warm up on the next and record
    on the third, so the first real request replays a graph. `inputs(batch)` gives prompt arguments for
    pipelines without text encoders (prompt strings otherwise).
    """
    import torch

    state = fast_state(pipe)
    if state is None or not state.dispatch:
        return
    with _all_warming(state.dispatch), torch.no_grad():
        for b in batch_sizes:
            prompts = inputs(b) if inputs else {"prompt": ["warm-up"] * b, "negative_prompt": [""] * b}
            for _ in range(runs):
                pipe(**prompts, num_inference_steps=2, width=width, height=height, guidance_scale=7.0,
                     output_type="pt", generator=[torch.Generator("cpu").manual_seed(i) for i in range(b)])
    state.warmed.add((width, height))


class _all_warming:
    def __init__(self, dispatchers: list[ShapeDispatch]):
        self.contexts = [d.warming() for d in dispatchers]

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)
