"""RetinaFace's detections from its raw outputs, as facexlib computes them for A1111 (`RetinaFace.detect_faces`
with `use_origin_size=True`, called by `FaceRestoreHelper.get_face_landmarks_5(resize=640)` at confidence 0.97):

- the picture, BGR, is resized (Lanczos) so its short side is 640, and facexlib's mean (104, 117, 123) is taken
  off; (one deviation, a bound: a picture whose long side would pass MAX_DETECT_SIDE is scaled to that instead)
- priors: per level (strides 8, 16, 32; anchor sizes 16/32, 64/128, 256/512 pixels), one per cell and size,
  cells row-major, centres at the cell middles, all in fractions of the input's width / height;
- decode with variances (0.1, 0.2): centre = prior centre + offset·0.1·prior size, size = prior size·e^(0.2·v),
  landmarks = prior centre + offset·0.1·prior size;
- keep scores over 0.97, best first, then greedy NMS at IoU 0.4 (torchvision's `nms`: areas without +1);
  (our bound: at most MAX_CANDIDATES enter the NMS, as in the RetinaFace authors' own test script)
Pure numpy here except the network call, so the maths is testable against hand-computed values.
"""

from __future__ import annotations

import itertools

import numpy as np

DETECT_SHORT_SIDE = 640  # get_face_landmarks_5(resize=640): the short side is brought to 640, up or down
MAX_DETECT_SIDE = 2048  # our bound: an 8192×1024 extras output would otherwise be searched at 5120×640
MIN_SIZES = ((16, 32), (64, 128), (256, 512))  # facexlib cfg_re50 min_sizes
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
CONF_THRESHOLD = 0.97  # get_face_landmarks_5 calls detect_faces(input_img, 0.97)
NMS_THRESHOLD = 0.4
MAX_CANDIDATES = 5000  # Pytorch_Retinaface's top_k: the NMS's work stays bounded whatever the picture
MEAN_BGR = (104.0, 117.0, 123.0)


def priors(height: int, width: int) -> np.ndarray:
    """(P, 4) priors (cx, cy, w, h) as fractions of the input, in the order the network's heads emit them."""
    rows = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        cells_y, cells_x = -(-height // step), -(-width // step)  # ceil
        for i, j in itertools.product(range(cells_y), range(cells_x)):
            for size in sizes:
                rows.append(((j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height))
    return np.asarray(rows, np.float32).reshape(-1, 4)


def decode_boxes(loc: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(P, 4) x1, y1, x2, y2 in fractions of the input."""
    centre = prior[:, :2] + loc[:, :2] * VARIANCES[0] * prior[:, 2:]
    size = prior[:, 2:] * np.exp(loc[:, 2:] * VARIANCES[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def decode_landmarks(pre: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(P, 5, 2) landmark points in fractions of the input."""
    return prior[:, None, :2] + pre.reshape(-1, 5, 2) * VARIANCES[0] * prior[:, None, 2:]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Indices kept, best score first: each box suppresses the lower-scored ones overlapping it by IoU > threshold."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order:
        best, rest = order[0], np.asarray(order[1:], int)
        keep.append(int(best))
        if not rest.size:
            break
        w = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = list(rest[iou <= threshold])
    return keep


def detection_input(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The network's input (1, 3, h, w) float32 and the factor from its pixels back to the picture's."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(h, w) / DETECT_SHORT_SIDE
    scale = max(scale, max(h, w) / MAX_DETECT_SIDE)
    size = (max(1, int(w / scale)), max(1, int(h / scale)))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    resized = cv2.resize(bgr, size, interpolation=cv2.INTER_LANCZOS4)
    x = resized.astype(np.float32) - np.asarray(MEAN_BGR, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), scale


def faces_from_outputs(loc: np.ndarray, conf: np.ndarray, landms: np.ndarray, input_hw: tuple[int, int],
                       scale: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(x1, y1, x2, y2 box, (5, 2) landmarks, score) in the picture's pixels, best first, after NMS."""
    h, w = input_hw
    prior = priors(h, w)
    boxes = decode_boxes(loc, prior) * np.array([w, h, w, h], np.float32) * scale
    points = decode_landmarks(landms, prior) * np.array([w, h], np.float32) * scale
    scores = conf[:, 1]
    chosen = np.flatnonzero(scores > CONF_THRESHOLD)
    chosen = chosen[np.argsort(-scores[chosen], kind="stable")][:MAX_CANDIDATES]
    boxes, points, scores = boxes[chosen], points[chosen], scores[chosen]
    return [(boxes[i], points[i], float(scores[i])) for i in nms(boxes, scores)]


def detect(net, rgb: np.ndarray, device: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """RetinaFace's faces in an RGB uint8 picture (see faces_from_outputs)."""
    import torch

    x, scale = detection_input(rgb)
    with torch.inference_mode():
        loc, conf, landms = (t[0].float().cpu().numpy() for t in net(torch.from_numpy(x).to(device)))
    return faces_from_outputs(loc, conf, landms, x.shape[2:], scale)
