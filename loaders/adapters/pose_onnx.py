"""The numbers of sd-webui-controlnet's DWPose and animal pose (`annotator/openpose/cv_ox_det.py`, `cv_ox_pose.py`):
a YOLOX detector finds boxes, RTMPose reads each box's keypoints from its SimCC heads.

Detector: the RGB picture scaled to fit 640×640 (top-left, the rest grey 114, 0..255 unnormalised), its 8400 anchor
rows (strides 8/16/32: centre offsets, log sizes, objectness, 80 COCO class scores) decoded, per-class NMS (IoU 0.45
over scores above 0.1), then boxes of the wanted classes scoring over 0.3.
Pose: each box grown by 1.25 and widened to the model's aspect ratio, cut out by an affine warp to its input size,
ImageNet-normalised (RGB); the argmax of each keypoint's x and y SimCC vectors (2 bins per pixel) is its place,
the smaller of the two maxima its score, mapped back through the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loaders.adapters.onnx_graphs import Graph, GraphSpec

# the extension's file names (annotator/downloads/openpose/), under models/annotators/ here
DETECTOR = "openpose/yolox_l.onnx"
WHOLEBODY = "openpose/dw-ll_ucoco_384.onnx"
ANIMAL = "openpose/rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"

DETECT_SIDE = 640
STRIDES = (8, 16, 32)
ANCHORS = sum((DETECT_SIDE // s) ** 2 for s in STRIDES)  # 8400
COCO_CLASSES = 80
PAD_VALUE = 114
NMS_IOU, CANDIDATE_SCORE, BOX_SCORE = 0.45, 0.1, 0.3
MAX_BOXES = 64  # each box is one pose-network run: a crowd (or a hostile graph's 8400 boxes) stays bounded
MAX_BOX_COORD = 2.0**20  # pixels
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


@dataclass(frozen=True)
class PoseInput:
    width: int
    height: int
    keypoints: int

    def spec(self) -> GraphSpec:
        return GraphSpec((None, 3, self.height, self.width),
                         ((None, self.keypoints, int(self.width * SIMCC_SPLIT)),
                          (None, self.keypoints, int(self.height * SIMCC_SPLIT))))


WHOLEBODY_INPUT = PoseInput(288, 384, 133)  # COCO-WholeBody: 17 body, 6 feet, 68 face, 2 × 21 hands
ANIMAL_INPUT = PoseInput(256, 256, 17)  # AP-10K
GRAPHS: dict[str, GraphSpec] = {
    DETECTOR: GraphSpec((None, 3, DETECT_SIDE, DETECT_SIDE), ((None, ANCHORS, 5 + COCO_CLASSES),)),
    WHOLEBODY: WHOLEBODY_INPUT.spec(),
    ANIMAL: ANIMAL_INPUT.spec(),
}


def letterbox(img: np.ndarray) -> tuple[np.ndarray, float]:
    """The detector's 1×3×640×640 input and the scale from the picture to it."""
    import cv2

    h, w = img.shape[:2]
    ratio = min(DETECT_SIDE / h, DETECT_SIDE / w)
    size = (int(w * ratio), int(h * ratio))
    canvas = np.full((DETECT_SIDE, DETECT_SIDE, 3), PAD_VALUE, np.uint8)
    canvas[:size[1], :size[0]] = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), ratio


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Each anchor row's cell (x, y) and stride, in the detector's row order (stride 8's cells first, row-major)."""
    cells, strides = [], []
    for stride in STRIDES:
        side = DETECT_SIDE // stride
        ys, xs = np.mgrid[0:side, 0:side]
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full(side * side, stride))
    return np.concatenate(cells).astype(np.float64), np.concatenate(strides)[:, None].astype(np.float64)


def decode_anchors(rows: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(boxes x0, y0, x1, y1 in picture pixels, class scores = objectness × class) from the 8400×85 rows."""
    cells, strides = _grid()
    rows = rows.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # a wild log-size is an infinite box, dropped later
        centre = (rows[:, :2] + cells) * strides
        size = np.exp(rows[:, 2:4]) * strides
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) / ratio
        scores = rows[:, 4:5] * rows[:, 5:]
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression, best first, areas counted in whole pixels (+1) as the extension does."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        lo = np.maximum(boxes[best, :2], boxes[rest, :2])
        hi = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.maximum(0.0, hi - lo + 1), axis=1)
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def detect(graph: Graph, img: np.ndarray, classes: tuple[int, ...]) -> np.ndarray | None:
    """Boxes (n×4) of the wanted COCO classes; None when no anchor of any class passed the candidate score
    (the extension tells the two apart: DWPose then finds nobody, while an empty list is read as "the whole
    picture")."""
    batch, ratio = letterbox(img)
    boxes, scores = decode_anchors(graph.run(batch)[0][0], ratio)
    # a box must have a size and stay within reach of the picture (a wild graph's 1e300-pixel box would
    # overflow the drawing's integer coordinates; NaN compares false and goes too)
    sane = (np.abs(boxes) < MAX_BOX_COORD).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not (scores[sane] > CANDIDATE_SCORE).any():
        return None
    found, found_scores = [], []
    for cls in classes:  # classes are suppressed separately; only the wanted ones can be kept, so only they run
        valid = sane & (scores[:, cls] > CANDIDATE_SCORE)
        cls_boxes, cls_scores = boxes[valid], scores[valid, cls]
        keep = [i for i in nms(cls_boxes, cls_scores, NMS_IOU) if cls_scores[i] > BOX_SCORE]
        found += list(cls_boxes[keep])
        found_scores += list(cls_scores[keep])
    if len(found) > MAX_BOXES:  # the best ones, in the order they were found
        best = sorted(np.argsort(found_scores)[::-1][:MAX_BOXES])
        found = [found[i] for i in best]
    return np.array(found, np.float64).reshape(-1, 4)


def box_crop(img: np.ndarray, box: np.ndarray, size: PoseInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box's normalised 1×3×H×W crop, its centre and its (padded, aspect-fixed) size in picture pixels."""
    import cv2

    centre = (box[:2] + box[2:]) / 2
    w, h = (box[2:] - box[:2]) * BOX_PADDING
    aspect = size.width / size.height
    scale = np.array([w, w / aspect] if w > h * aspect else [h * aspect, h])
    k = size.width / scale[0]  # the same factor both ways: the aspect ratio now matches the input's
    warp = np.array([[k, 0, size.width / 2 - k * centre[0]], [0, k, size.height / 2 - k * centre[1]]])
    crop = cv2.warpAffine(img, warp, (size.width, size.height), flags=cv2.INTER_LINEAR)
    crop = (crop - MEAN) / STD
    return crop.transpose(2, 0, 1)[None].astype(np.float32), centre, scale


def simcc_keypoints(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K×2 places in input pixels, K scores) from one crop's K×Wx and K×Wy SimCC vectors; a keypoint whose
    score is not positive is placed at -1 bins."""
    places = np.stack([simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)], axis=-1).astype(np.float64)
    scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1)).astype(np.float64)
    places[~(scores > 0)] = -1
    return places / SIMCC_SPLIT, scores


def estimate(graph: Graph, img: np.ndarray, boxes: np.ndarray, size: PoseInput) -> tuple[np.ndarray, np.ndarray]:
    """(n×K×2 keypoints in picture pixels, n×K scores) for each box, one network run per box (the published
    graphs have a batch of one)."""
    keypoints, scores = [], []
    for box in boxes:
        crop, centre, scale = box_crop(img, box, size)
        simcc_x, simcc_y = graph.run(crop)
        places, score = simcc_keypoints(simcc_x[0], simcc_y[0])
        keypoints.append(places / (size.width, size.height) * scale + centre - scale / 2)
        scores.append(score)
    return (np.array(keypoints).reshape(len(boxes), size.keypoints, 2),
            np.array(scores).reshape(len(boxes), size.keypoints))
