"""Face detection for face restoration: five landmarks per face, as facexlib's RetinaFace gives A1111.

The first of these that is installed runs:
- RetinaFace-ResNet50, A1111's own detector (its `detection_Resnet50_Final` weights as `.safetensors` in
  models/GFPGAN; network in loaders.adapters.retinaface, facexlib's pre- and post-processing, thresholds
  included, in loaders.adapters.retinaface_boxes).
- YuNet (`cv2.FaceDetectorYN`, the ONNX file `face_detection_yunet_2023mar.onnx` installed in models/GFPGAN):
  a CNN that, like RetinaFace, returns a box, a score and the 5 landmarks (eyes, nose tip, mouth corners) in
  the order the FFHQ template uses, so faces are aligned as A1111 aligns them, rotation included.
- OpenCV's Haar frontal-face cascade (shipped inside the cv2 wheel: nothing to install) when no YuNet model is:
  boxes only, so the 5 points are placed where they sit on an average upright frontal face inside the box.
YuNet and Haar run on the picture scaled up (never down) to 640 pixels on its short side (after facexlib's
`resize=640`, which also scales down). All three drop faces whose eyes are under 5 pixels apart (A1111's
`eye_dist_threshold=5`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loaders.adapters import retinaface_boxes

DETECT_SHORT_SIDE = 640  # facexlib get_face_landmarks_5(resize=640): upscale small pictures to find small faces
MAX_DETECT_SIDE = 2048  # the detector's input is bounded (an 8192² extras output would take GBs in YuNet):
                        # larger pictures are searched scaled down to this long side
EYE_DIST_THRESHOLD = 5.0  # pixels in the original picture; closer eyes are side or tiny faces (A1111 skips them)
SCORE_THRESHOLD = 0.8  # YuNet's: facexlib's RetinaFace default conf_threshold (A1111's call asks 0.97 of it)
NMS_THRESHOLD = 0.4  # facexlib's RetinaFace nms_threshold
MAX_FACES = 32  # per picture: each face is one 512² network pass, so a crowd cannot run unbounded
# Where the 5 points fall inside a Haar frontal-face box (fractions of its width / height), measured on
# upright frontal faces: eyes a third of the way in at 42 % height, nose tip at 57 %, mouth corners at 73 %.
HAAR_LANDMARKS = np.array([[0.35, 0.42], [0.65, 0.42], [0.50, 0.57], [0.37, 0.73], [0.63, 0.73]], np.float32)


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x, y, width, height in the picture's pixels
    landmarks: np.ndarray  # (5, 2): image-left eye, image-right eye, nose tip, left and right mouth corner
    score: float


def detect_faces(rgb: np.ndarray, yunet_model: Path | None = None, max_faces: int = MAX_FACES, *,
                 retinaface=None, device: str = "cpu") -> list[Face]:
    """The faces in an RGB uint8 picture, best first, at most `max_faces`: with the loaded `retinaface`
    network when given, else YuNet from its ONNX file when given, else the Haar cascade."""
    if retinaface is not None:
        found = [((x1, y1, x2 - x1, y2 - y1), points, score)
                 for (x1, y1, x2, y2), points, score in retinaface_boxes.detect(retinaface, rgb, device)]
        return _kept(found, 1.0, max_faces)
    import cv2

    h, w = rgb.shape[:2]
    scale = max(1.0, DETECT_SHORT_SIDE / min(h, w))
    scale = min(scale, MAX_DETECT_SIDE / max(h, w))  # a huge (upscaled) picture is searched at 2048 pixels
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale != 1:
        interpolation = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
        bgr = cv2.resize(bgr, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=interpolation)
    found = _yunet(bgr, yunet_model) if yunet_model is not None else _haar(bgr)
    return _kept(found, scale, max_faces)


def _kept(found: list[tuple], scale: float, max_faces: int) -> list[Face]:
    """Detections in the picture's pixels, side and tiny faces dropped, best (then largest) first."""
    faces = []
    for box, landmarks, score in found:
        landmarks = landmarks / scale
        if np.linalg.norm(landmarks[0] - landmarks[1]) < EYE_DIST_THRESHOLD:
            continue
        faces.append(Face(tuple(float(v) / scale for v in box), landmarks, score))
    faces.sort(key=lambda f: (f.score, f.box[2] * f.box[3]), reverse=True)
    return faces[:max_faces]


def _yunet(bgr: np.ndarray, model: Path) -> list[tuple]:
    import cv2

    h, w = bgr.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(model), "", (w, h), SCORE_THRESHOLD, NMS_THRESHOLD, 5000)
    _, rows = detector.detect(bgr)
    if rows is None:
        return []
    # a row: x, y, w, h, then 5 (x, y) landmarks (right eye of the person = image-left first), then the score
    return [(row[:4], row[4:14].reshape(5, 2).astype(np.float32), float(row[14])) for row in rows]


_per_thread = threading.local()


def _cascade():
    """OpenCV's frontal-face cascade, parsed once per thread (its XML is ~1 MB; a classifier is not shared
    between threads, as OpenCV does not promise that detectMultiScale is thread-safe)."""
    import cv2

    if getattr(_per_thread, "cascade", None) is None:
        _per_thread.cascade = cv2.CascadeClassifier(
            str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    return _per_thread.cascade


def _haar(bgr: np.ndarray) -> list[tuple]:
    import cv2

    cascade = _cascade()
    gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(48, 48))
    out = []
    for x, y, bw, bh in (boxes if len(boxes) else []):
        points = HAAR_LANDMARKS * np.array([bw, bh], np.float32) + np.array([x, y], np.float32)
        out.append(((x, y, bw, bh), points, 1.0))  # the cascade gives no score: larger boxes sort first
    return out
