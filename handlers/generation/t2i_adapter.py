"""T2I-Adapter units: a ControlNet unit whose model is a T2I-Adapter file (sd-webui-controlnet runs both kinds).

The unit's detected map goes through diffusers' `T2IAdapter` once per image size; its features are added to the
UNet's encoder blocks at every step through `down_intrablock_additional_residuals` — what diffusers' adapter
pipelines pass — from a UNet pre-hook, so the same unit works in txt2img, img2img, inpaint, hires fix and next to
ControlNet / IP-Adapter units.
- `weight` scales the features (0 adds nothing: the image equals the unit-less one);
- `guidance_start` / `guidance_end`: outside that fraction of the schedule (1 - t/T) no features are added;
- `control_mode` as for ControlNets: 1 and 2 scale feature k of n by 0.825^(n-1-k) (soft injection), 2 also adds
  them to the prompt half of the CFG batch only;
- `hr_option`: the features exist only for the sizes of the passes the unit takes part in.
Several T2I units add their features up. The hook lives only inside `applied()`, under the device lock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from PIL import Image

from loaders.adapters.t2i_adapter import LoadedT2IAdapter
from loaders.errors import InvalidRequest

SOFT_DECAY = 0.825  # the extension's soft-injection factor, as for ControlNets


@dataclass
class T2IUnit:
    unit: object  # the ControlNetUnit
    adapter: LoadedT2IAdapter
    maps: dict[tuple[int, int], Image.Image]  # (width, height) of each pass it takes part in -> fitted map
    features: dict = field(default_factory=dict)  # (width, height) -> adapter features, computed on first use

    def features_for(self, width: int, height: int):
        if (width, height) not in self.maps:
            return None
        if (width, height) not in self.features:
            self.features[(width, height)] = _run(self.adapter, self.maps[(width, height)])
        return self.features[(width, height)]


def check_size(adapter: LoadedT2IAdapter, width: int, height: int, where: str) -> None:
    if width % adapter.downscale or height % adapter.downscale:
        raise InvalidRequest(f"`{where}.model` {adapter.name!r}: a T2I-Adapter needs width and height divisible "
                             f"by {adapter.downscale}, not {width}x{height}")


def _run(adapter: LoadedT2IAdapter, image: Image.Image):
    import numpy as np
    import torch

    model = adapter.model
    mode = "L" if adapter.in_channels == 1 else "RGB"
    pixels = np.asarray(image.convert(mode), np.float32) / 255.0
    x = torch.from_numpy(pixels)
    x = x[None, None] if mode == "L" else x.permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(x.to(model.device, model.dtype))


@contextlib.contextmanager
def applied(unet, units: list[T2IUnit], *, cfg: bool, timesteps: int = 1000):
    if not units:
        yield
        return
    handle = unet.register_forward_pre_hook(_with_features(units, cfg, timesteps), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _scaled(unit: T2IUnit, features: list, batch: int, cfg: bool) -> list:
    n, mode = len(features), unit.unit.control_mode
    out = []
    for k, f in enumerate(features):
        factor = float(unit.unit.weight) * (SOFT_DECAY ** (n - 1 - k) if mode >= 1 else 1.0)
        rows = f.expand(batch, -1, -1, -1) * factor
        if mode == 2 and cfg and batch % 2 == 0:  # cfg injection: the negative-prompt half gets none
            rows = rows.clone()
            rows[: batch // 2] = 0
        out.append(rows)
    return out


def _with_features(units: list[T2IUnit], cfg: bool, timesteps: int):
    def pre(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        done = 1 - t / timesteps
        batch, (h, w) = sample.shape[0], sample.shape[-2:]
        total = None
        for u in units:
            if not u.unit.guidance_start <= done <= u.unit.guidance_end:
                continue
            features = u.features_for(w * 8, h * 8)
            if features is None:
                continue
            scaled = _scaled(u, features, batch, cfg)
            total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
        if total is None:
            return None
        kwargs = dict(kwargs)
        kwargs["down_intrablock_additional_residuals"] = [f.to(sample.device, sample.dtype) for f in total]
        return args, kwargs

    return pre
