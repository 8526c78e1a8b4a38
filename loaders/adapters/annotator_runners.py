"""Model-based ControlNet preprocessors as sd-webui-controlnet runs them, on controlnet-aux's networks (HED, PiDiNet,
M-LSD, lineart, lineart_anime, TEED / Anyline, BAE normals; OpenPose is `openpose_runners`).

Each runner gets the image already scaled to the module's resolution (short side) and does what the extension's
`scripts/preprocessor/legacy/processor.py` and `annotator/*` do after that: pad to a multiple of 64 (edge pixels),
run the network with the extension's input scaling and channel order, post-process (sigmoid of the mean side
output, "safe" quantisation, scribble thinning, inversion), and crop the padding off again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from loaders.adapters.annotator_nets import aux

Runner = Callable[[np.ndarray, float, float, object], np.ndarray]

HED = "hed/ControlNetHED.safetensors"
PIDINET = "pidinet/table5_pidinet.safetensors"
MLSD = "mlsd/mlsd_large_512_fp32.safetensors"
LINEART, LINEART_COARSE = "lineart/sk_model.safetensors", "lineart/sk_model2.safetensors"
LINEART_ANIME = "lineart_anime/netG.safetensors"
TEED, MTEED = "TEED/7_model.safetensors", "Anyline/MTEED.safetensors"
NORMAL_BAE = "normal_bae/scannet.safetensors"


def padded(run: Runner) -> Runner:
    """The extension's `resize_image_with_pad`: the network sees sides that are multiples of 64 (the edge pixels
    repeated) and the map is cropped back to the image."""

    def wrapped(img, a, b, ctx):
        h, w = img.shape[:2]
        big = np.pad(img, [[0, -h % 64], [0, -w % 64], [0, 0]], mode="edge")
        return np.ascontiguousarray(run(big, a, b, ctx)[:h, :w])

    return wrapped


def _tensor(img: np.ndarray, scale: float = 1.0, offset: float = 0.0):
    """HxWxC uint8 → 1xCxHxW float32, `img * scale + offset`."""
    import torch

    return (torch.from_numpy(np.ascontiguousarray(img)).float() * scale + offset).permute(2, 0, 1)[None]


def _side_outputs_edge(outputs, h: int, w: int) -> np.ndarray:
    """HED / TEED: the sigmoid of the mean of the side outputs, each resized to the image (float64, 0..1)."""
    import cv2

    maps = [cv2.resize(o[0, 0].float().numpy(), (w, h), interpolation=cv2.INTER_LINEAR) for o in outputs]
    return 1 / (1 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))


def _to_uint8(edge: np.ndarray) -> np.ndarray:
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _safe(edge: np.ndarray, steps: int = 2) -> np.ndarray:
    return aux("util").safe_step(edge, steps)


def _scribble(edge: np.ndarray) -> np.ndarray:
    """The extension's scribble from a soft edge: thin (non-maximum suppression), blur, then any trace → white."""
    import cv2

    out = cv2.GaussianBlur(aux("util").nms(edge, 127, 3.0), (0, 0), 3.0)
    return np.where(out > 4, 255, 0).astype(np.uint8)


def hed(safe: bool = False) -> Runner:
    def run(img, a, b, ctx):
        import torch

        model = ctx.load(HED)
        with torch.inference_mode():  # RGB 0..255 in: the network subtracts its own learnt mean
            edge = _side_outputs_edge(model(_tensor(img)), *img.shape[:2])
        return _to_uint8(_safe(edge) if safe else edge)

    return padded(run)


def pidinet(safe: bool = False, binary: bool = False) -> Runner:
    def run(img, a, b, ctx):
        import torch

        model = ctx.load(PIDINET)
        with torch.inference_mode():  # BGR in 0..1, the last (fused) output
            edge = model(_tensor(img[:, :, ::-1], 1 / 255))[-1][0, 0].float().numpy()
        if binary:  # t2ia_sketch_pidi: the extension's `apply_fliter`
            edge = (edge > 0.5).astype(np.float32)
        return _to_uint8(_safe(edge) if safe else edge)

    return padded(run)


def scribble_of(soft: Runner) -> Runner:
    """scribble_hed / scribble_pidinet: the soft edge (padding already cropped), then thinned to strokes."""
    return lambda img, a, b, ctx: _scribble(soft(img, a, b, ctx))


def _mlsd(img, a, b, ctx):
    """M-LSD line segments (value threshold a, distance threshold b) drawn 1 px white on black."""
    import cv2
    import torch

    model = ctx.load(MLSD)
    out = np.zeros(img.shape[:2], np.uint8)
    with torch.inference_mode():
        try:
            lines = aux("mlsd.utils").pred_lines(img, model, [img.shape[0], img.shape[1]], a, b)
        except IndexError:  # no segment passed the thresholds (pred_lines indexes an empty array)
            lines = []
    for x1, y1, x2, y2 in lines:
        cv2.line(out, (int(x1), int(y1)), (int(x2), int(y2)), 255, 1)
    return out


def lineart(weights: str) -> Runner:
    def run(img, a, b, ctx):
        import torch

        model = ctx.load(weights)
        with torch.inference_mode():
            line = model(_tensor(img, 1 / 255))[0, 0].float().numpy()
        # the network draws dark lines on white; lineart ControlNets take white lines on black (the extension
        # truncates, then inverts)
        return 255 - _to_uint8(line)

    return padded(run)


def _lineart_anime(img, a, b, ctx):
    """The anime U-Net wants sides in multiples of 256 (8 halvings): resized there and back, as the extension."""
    import cv2
    import torch

    model = ctx.load(LINEART_ANIME)
    h, w = img.shape[:2]
    side = (256 * -(-h // 256), 256 * -(-w // 256))
    big = cv2.resize(img, (side[1], side[0]), interpolation=cv2.INTER_CUBIC)
    with torch.inference_mode():
        line = (model(_tensor(big, 1 / 127.5, -1.0))[0, 0] * 127.5 + 127.5).float().numpy()
    line = cv2.resize(line, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return 255 - line


def _teed_edge(weights: str, img, steps: int, ctx) -> np.ndarray:
    import torch

    model = ctx.load(weights)
    with torch.inference_mode():  # RGB 0..255 in, like HED
        edge = _side_outputs_edge(model(_tensor(img)), *img.shape[:2])
    return _to_uint8(_safe(edge, steps) if steps else edge)


def _teed(img, a, b, ctx):
    """TEED soft edge; threshold_a is the extension's "Safe Steps" (0: no quantisation)."""
    return _teed_edge(TEED, img, int(a), ctx)


def _anyline(img, a, b, ctx):
    """Anyline: MTEED's edge, with the lineart_standard pixels of intensity exactly 1 in blobs of at least 12 px
    set to 1. That is what the extension's uint8 arithmetic makes of Anyline's float recipe; kept as it is."""
    edge = _teed_edge(MTEED, img, int(a), ctx)
    faint = lineart_standard_map(img) == 1
    keep = _big_components(faint, min_size=12)  # skimage remove_small_objects(min_size=36) over 3 equal channels
    return np.where(keep, np.uint8(1), edge)


def _normal_bae(img, a, b, ctx):
    """Surface normals as RGB: the ImageNet-normalised image in, the last refinement's (x, y, z) in -1..1 → 0..255."""
    import torch

    model = ctx.load(NORMAL_BAE)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        normal = model((_tensor(img, 1 / 255) - mean) / std)[0][-1][:, :3]
        normal = ((normal + 1) * 0.5).clip(0, 1)[0].permute(1, 2, 0).float().numpy()
    return _to_uint8(normal)


def lineart_standard_map(img: np.ndarray) -> np.ndarray:
    """The extension's weight-free lineart_standard: how much darker each pixel is than its blurred surroundings,
    scaled by the median of the clear strokes (dark lines on a light background become white on black)."""
    import cv2

    x = img.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def _big_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """The pixels of `mask` in 4-connected components of at least `min_size` pixels."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    big = stats[:, cv2.CC_STAT_AREA] >= min_size
    big[0] = False  # the background label
    return big[labels] & mask


# internal module name -> (runner, annotator files it reads)
RUNNERS: dict[str, tuple[Runner, tuple[str, ...]]] = {
    "hed": (hed(), (HED,)),
    "hed_safe": (hed(safe=True), (HED,)),
    "scribble_hed": (scribble_of(hed()), (HED,)),
    "pidinet": (pidinet(), (PIDINET,)),
    "pidinet_safe": (pidinet(safe=True), (PIDINET,)),
    "pidinet_scribble": (scribble_of(pidinet()), (PIDINET,)),
    "pidinet_sketch": (pidinet(binary=True), (PIDINET,)),
    "mlsd": (padded(_mlsd), (MLSD,)),
    "lineart": (lineart(LINEART), (LINEART,)),
    "lineart_coarse": (lineart(LINEART_COARSE), (LINEART_COARSE,)),
    "lineart_anime": (padded(_lineart_anime), (LINEART_ANIME,)),
    "softedge_teed": (padded(_teed), (TEED,)),
    "softedge_anyline": (padded(_anyline), (MTEED,)),
    "normal_bae": (padded(_normal_bae), (NORMAL_BAE,)),
}
