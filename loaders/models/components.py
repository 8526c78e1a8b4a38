"""Pipeline components from state dicts: a part inside a single file or a separate file, with the shipped config.

Used for FLUX.1 (every part: the transformer through loaders.models.flux_keys, the VAE through diffusers' LDM
converter, CLIP-L / T5 in their Hugging Face layouts) and for the separate text encoders of SD 3.5. Modules are
made with empty weights and the file's tensors assigned in the pipeline's dtype, so a 4.7 B-parameter T5 is never
first initialised at random.
"""

from __future__ import annotations

import json
from pathlib import Path

from loaders.models.flux_keys import flux_to_diffusers


def read_state(path: Path, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict:
    """The tensors under `prefix` (stripped), skipping keys that start with any of `exclude`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys()
                if k.startswith(prefix) and not k.startswith(exclude)}


def component_class(root: Path, component: str) -> str:
    return json.loads((root / "model_index.json").read_text())[component][1]


def load_component(root: Path, component: str, state: dict, dtype):
    """The pipeline's `component` (class from the folder's model_index.json) with the weights in `state`."""
    if "scaled_fp8" in state or any(k.endswith(".scale_weight") for k in state):
        # ComfyUI's "fp8_scaled" files: each weight needs its own scale, which a plain upcast would drop
        raise ValueError(f"{component}: a ComfyUI scaled-fp8 file (`scaled_fp8`, `*.scale_weight`) is not supported; "
                         "use the fp16, bf16 or plain fp8_e4m3fn file")
    cls_name = component_class(root, component)
    if cls_name == "AutoencoderKL":
        from diffusers import AutoencoderKL

        # diffusers' converter strips `vae.` / `first_stage_model.` itself and maps LDM names to its own
        return AutoencoderKL.from_single_file(state, config=str(root), subfolder=component, torch_dtype=dtype,
                                              local_files_only=True)
    if cls_name == "FluxTransformer2DModel":
        from diffusers import FluxTransformer2DModel

        config = FluxTransformer2DModel.load_config(root / component)
        model = _empty(lambda: FluxTransformer2DModel.from_config(config))
        return _assign(model, flux_to_diffusers(state, dict(model.config)), dtype, component)
    import transformers

    cls = getattr(transformers, cls_name)
    config = cls.config_class.from_pretrained(root / component)
    model = _empty(lambda: cls(config))
    return _assign(model, _hf_text_state(model, state), dtype, component)


def _empty(make):
    """Parameters on the meta device (buffers real: CLIP's position ids are not in the files)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return make()


def _hf_text_state(model, state: dict) -> dict:
    """A CLIP / T5 file's keys as this transformers version names them."""
    import torch

    state = dict(state)
    expected = set(model.state_dict())
    if not hasattr(model, "text_model"):  # transformers ≥ 5.6 flattened CLIPTextModel (`text_model.` gone)
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    if "text_projection.weight" in expected and "text_projection.weight" not in state and hasattr(model, "config"):
        # SD 3.5's CLIP-L files carry no projection; diffusers loads an identity in its place, so do we
        state["text_projection.weight"] = torch.eye(model.config.hidden_size)
    if "shared.weight" in expected and "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    return {k: v for k, v in state.items() if k in expected}


def _assign(model, state: dict, dtype, component: str):
    """Load `state` into `model` (meta parameters) in `dtype`; a missing weight is the file's fault (ValueError)."""
    import torch

    keep_fp32 = getattr(model, "_keep_in_fp32_modules", None) or ()
    cast = {k: v.to(torch.float32 if dtype == torch.float16 and any(m in k.split(".") for m in keep_fp32) else dtype)
            for k, v in state.items()}
    result = model.load_state_dict(cast, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # T5: the encoder's embedding is the shared one
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise ValueError(f"{component}: the file lacks {len(still_meta)} weight(s), e.g. {still_meta[0]!r} "
                         f"(missing: {list(result.missing_keys)[:3]})")
    return model.eval()
