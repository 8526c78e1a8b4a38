"""Pipelines from single files: diffusers' `from_single_file` for the UNet families and SD 3.5 (with the separate
text encoders a file may lack), our part-by-part build for FLUX.1 in any Forge / ComfyUI / BFL layout (see
loaders.models.parts for where each part comes from)."""

from __future__ import annotations

from pathlib import Path

from loaders.models.clip_vocab import pad_without_splitting
from loaders.models.components import load_component, read_state
from loaders.models.families import config_dir, flux_prefix
from loaders.models.families import family as family_spec
from loaders.models.parts import PARTS, inside
from loaders.models.skip_init import weights_from_file

_NOT_TRANSFORMER = ("vae.", "first_stage_model.", "text_encoders.", "cond_stage_model.")
OffloadChoice = bool | str  # True, False or "auto" (handlers.settings `offload_t5`)


def pipeline_dtype(family: str, device: str, cpu_dtype: str = "float32"):
    """fp16 on CUDA (SDXL's VAE upcasts itself: `force_upcast` in its config), but bf16 for FLUX, whose activations
    overflow fp16; on CPU fp32 unless the operator chose bfloat16 (half the memory: SDXL ~7 GB instead of ~14 GB)."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if family_spec(family).arch == "flux" else torch.float16
    return getattr(torch, cpu_dtype)


def build_pipeline(path: Path, family: str, device: str, *, configs=None, cpu_dtype: str = "float32",
                   parts: dict[str, Path] | None = None, storage: str = "native",
                   offload_t5: OffloadChoice = False):
    """A diffusers pipeline from an A1111 single file, configured only from configs shipped in the package.

    `configs` (a loaders.models.family_configs.FamilyConfigs) completes the real families' folders with tokenizers;
    without it only families whose shipped folder is complete (the demos) load. `parts`: component → separate
    file for what the single file lacks (loaders.models.parts). `storage` "float8": a transformer's weights are
    kept in float8 (`store_transformer`); `offload_t5` True (or "auto" when the GPU is short, `should_offload_t5`):
    T5-XXL waits in host memory between uses (`offload`).
    """
    import diffusers

    spec = family_spec(family)
    config = configs.ensure(family) if configs is not None else config_dir(family)
    dtype = pipeline_dtype(family, device, cpu_dtype)
    if spec.arch == "flux":
        with weights_from_file():
            pipe = build_flux(path, config, dtype, parts or {})
        return _finish(pipe, device, storage, offload_t5)
    cls = getattr(diffusers, spec.pipeline)
    # A1111 runs no safety checker and adds no invisible watermark
    extra = {"add_watermarker": False} if spec.is_sdxl else {"safety_checker": None, "requires_safety_checker": False}
    with weights_from_file():
        pipe = cls.from_single_file(
            str(path),
            config=str(config),
            local_files_only=True,  # no model hub, ever
            torch_dtype=dtype,
            device=device,  # UNet and VAE weights go from the mmapped file straight to the device: no host copy
            **extra, **separate_modules(config, parts or {}, dtype),
        )
    return _finish(pipe, device, storage, offload_t5)


def _finish(pipe, device: str, storage: str = "native", offload_t5: OffloadChoice = False):
    for tokenizer in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)):
        if tokenizer is not None and "CLIP" in type(tokenizer).__name__:  # FLUX's tokenizer_2 is T5's
            pad_without_splitting(tokenizer)  # "!" in an OpenCLIP prompt is text, as in A1111
    pipe.set_progress_bar_config(disable=True)
    t5s = [m for m in pipe.components.values() if type(m).__name__ == "T5EncoderModel"]
    # Decided before anything moves, so an offloaded T5 never visits the GPU (nor makes a tight one run out)
    if t5s and should_offload_t5(offload_t5, device, lambda: _free_device_bytes(device),
                                 lambda: _bytes_to_move(pipe, device, storage)):
        for module in t5s:
            offload(module, device)
    pipe = move_stragglers(pipe, device)
    store_transformer(pipe, storage)
    return pipe


T5_AUTO_HEADROOM_BYTES = 6 * 2**30
"""What `auto` keeps free on the GPU for one request's activations once every weight is there: FLUX.1's
transformer at 1024² plus the VAE decode are a few GB in bf16 (an estimate from the tensor sizes, not measured
on a GPU here; `EASEL_OFFLOAD_T5=true|false` overrides it)."""


def should_offload_t5(choice: OffloadChoice, device: str, free_bytes, weight_bytes,
                      headroom: int = T5_AUTO_HEADROOM_BYTES) -> bool:
    """`true` / `false` as set; `auto`: on CUDA only (elsewhere the host is the device), when the device's free
    memory (`free_bytes()`, bytes) less the weights still to move there (`weight_bytes()`) leaves less than
    `headroom` for activations. Parking the T5 then frees its 9.5 GB for a host-to-GPU copy per prompt encode."""
    if choice != "auto":
        return bool(choice)
    if not device.startswith("cuda"):
        return False
    return free_bytes() - weight_bytes() < headroom


def _free_device_bytes(device: str) -> int:
    import torch

    return torch.cuda.mem_get_info(torch.device(device))[0]


def _bytes_to_move(pipe, device: str, storage: str) -> int:
    """Bytes of the weights not yet on `device` (a float8-stored transformer at one byte a weight)."""
    import torch

    total = 0
    for name, part in pipe.components.items():
        if not isinstance(part, torch.nn.Module):
            continue
        for tensor in [*part.parameters(), *part.buffers()]:
            if tensor.device.type != torch.device(device).type:
                one = 1 if storage == "float8" and name == "transformer" else tensor.element_size()
                total += tensor.numel() * one
    return total


def offload(module, device: str, home: str = "cpu") -> None:
    """Keep `module` in host memory; each forward moves it to `device` and back when done. A T5-XXL encodes a
    prompt once (twice with CFG) per request, so the GPU holds its 9.5 GB only for those calls."""
    module.to(home)

    def arrive(mod, args, kwargs):
        mod.to(device)

    def leave(mod, args, kwargs, output):
        mod.to(home)
        return output

    module.register_forward_pre_hook(arrive, with_kwargs=True)
    module.register_forward_hook(leave, with_kwargs=True)
    module._easel_offloaded = (device, home)


def move_stragglers(pipe, device: str):
    """Moves only what `from_single_file` left elsewhere (text encoders, on CUDA): `pipe.to` walks every parameter."""
    import torch

    for part in pipe.components.values():
        first = next(part.parameters(), None) if isinstance(part, torch.nn.Module) else None
        if hasattr(part, "_easel_offloaded"):
            continue  # parked in host memory; its hooks bring it over per call
        if first is not None and first.device.type != torch.device(device).type:
            part.to(device)
    return pipe


def store_transformer(pipe, storage: str) -> None:
    """float8: the transformer's weights stored as float8_e4m3fn and upcast to its dtype one layer at a time
    (diffusers' layerwise casting; norms and embeddings stay as they are). FLUX.1's 23.8 GB in bf16 become ~12 GB."""
    transformer = getattr(pipe, "transformer", None)
    if storage != "float8" or transformer is None:
        return  # the UNet families are small enough in fp16
    import torch

    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=transformer.dtype)
    pipe._easel_storage = "float8"  # LoRAs cannot be applied to float8 weights (PEFT casts them to the base dtype)


def stored_in_float8(pipe) -> bool:
    return getattr(pipe, "_easel_storage", "native") == "float8"


def file_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def build_flux(path: Path, root: Path, dtype, separate: dict[str, Path]):
    """A FluxPipeline: the transformer from `path`, each other part from `path` if inside, else its separate file."""
    from diffusers import FluxPipeline

    keys = file_keys(path)
    prefix = flux_prefix(keys) or ""
    modules = {"transformer": load_component(root, "transformer", read_state(path, prefix, _NOT_TRANSFORMER), dtype)}
    for part in PARTS["flux"]:
        where = inside(part, keys)
        state = read_state(path, where) if where is not None else read_state(separate[part.component])
        modules[part.component] = load_component(root, part.component, state, dtype)
    # scheduler and tokenizers from the shipped folder; every weight is passed in, nothing else is read
    return FluxPipeline.from_pretrained(str(root), **modules, torch_dtype=dtype, local_files_only=True)


def separate_modules(root: Path, separate: dict[str, Path], dtype) -> dict:
    """component → module for the parts a single file lacks (SD 3.5 without text encoders)."""
    return {component: load_component(root, component, read_state(p), dtype) for component, p in separate.items()}
