"""dw_openpose_full and animal_openpose: YOLOX boxes, RTMPose keypoints (`pose_onnx`), drawn as the extension does.

As `OpenposeDetector.__call__` with `use_dw_pose` / `use_animal_pose`, on the picture padded to a multiple of 64:
- DWPose: people (COCO class 0); the 133 whole-body keypoints become OpenPose's 18 body points (a neck added
  between the shoulders), 68 face points (+ the two eyes: OpenPose faces have 70), and two 21-point hands; points
  scoring under 0.3 are left out. Drawn with OpenPose's body, hand and face drawing (`pose_drawing`).
- Animals (COCO classes 14-23, bird to giraffe): the 17 AP-10K points, all kept, joined by the extension's 17
  coloured 5-pixel limbs.
The keypoints handed to `on_pose` are in the canvas's pixels, as the extension's JSON has them for these two
modules (OpenPose's own are fractions of the canvas).
"""

from __future__ import annotations

import numpy as np

from loaders.adapters import pose_onnx
from loaders.adapters.annotator_nets import open_pose
from loaders.adapters.annotator_runners import Runner, padded
from loaders.adapters.pose_drawing import draw_poses
from loaders.adapters.pose_onnx import ANIMAL, ANIMAL_INPUT, DETECTOR, WHOLEBODY, WHOLEBODY_INPUT

SCORE_THRESHOLD = 0.3
PERSON = (0,)
ANIMALS = tuple(range(14, 24))  # COCO: bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe
LEFT_SHOULDER, RIGHT_SHOULDER, NECK = 5, 6, 17
# OpenPose's body point i is whole-body row BODY_ROWS[i] once the neck is inserted at row 17
BODY_ROWS = [0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
FACE_ROWS, LEFT_HAND_ROWS, RIGHT_HAND_ROWS = slice(24, 92), slice(92, 113), slice(113, 134)
RIGHT_EYE, LEFT_EYE = 14, 15  # OpenPose body points closing a 68-point face to 70
# AP-10K limbs (0-based points) and the colour each is drawn in (RGB)
ANIMAL_LIMBS = [((0, 1), (255, 255, 255)), ((1, 2), (100, 255, 100)), ((0, 2), (150, 255, 255)),
                ((2, 3), (100, 50, 255)), ((3, 8), (50, 150, 200)), ((8, 9), (0, 255, 255)),
                ((9, 10), (0, 150, 0)), ((3, 5), (0, 0, 255)), ((5, 6), (0, 0, 150)), ((6, 7), (255, 50, 255)),
                ((3, 4), (255, 0, 255)), ((4, 14), (255, 0, 0)), ((14, 15), (150, 0, 0)),
                ((15, 16), (255, 255, 100)), ((4, 11), (0, 150, 0)), ((11, 12), (255, 255, 0)),
                ((12, 13), (150, 150, 150))]
ANIMAL_LIMB_WIDTH = 5

Point = tuple[float, float] | None  # canvas pixels; None: not found


def openpose_rows(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """n×134×3 (x, y, score): the whole-body rows with a neck at row 17 (the shoulders' midpoint, score 1 when
    both shoulders score over 0.3, else 0) and rows 0-17 in OpenPose's body order."""
    rows = np.concatenate([keypoints, scores[..., None]], axis=-1)
    shoulders = rows[:, [LEFT_SHOULDER, RIGHT_SHOULDER]]
    neck = shoulders.mean(axis=1)
    neck[:, 2] = (shoulders[:, :, 2] > SCORE_THRESHOLD).all(axis=1)
    rows = np.insert(rows, NECK, neck, axis=1)
    rows[:, :18] = rows[:, BODY_ROWS]
    return rows


def _part(rows: np.ndarray) -> list[Point] | None:
    points = [(float(x), float(y)) if score >= SCORE_THRESHOLD else None for x, y, score in rows]
    return None if all(p is None for p in points) else points


def people(keypoints: np.ndarray, scores: np.ndarray) -> list[dict[str, list[Point] | None]]:
    """Each person's body (18, always), face (70) and hands (21 each), None for a part with no point found."""
    found = []
    for rows in openpose_rows(keypoints, scores):
        body = _part(rows[:18]) or [None] * 18
        face = _part(rows[FACE_ROWS])
        if face is not None:
            face += [body[RIGHT_EYE], body[LEFT_EYE]]
        found.append({"body": body, "face": face, "left_hand": _part(rows[LEFT_HAND_ROWS]),
                      "right_hand": _part(rows[RIGHT_HAND_ROWS])})
    return found


def _flat(points: list[Point] | None) -> list[float] | None:
    if not points:
        return None
    return [v for p in points for v in ((p[0], p[1], 1.0) if p is not None else (0.0, 0.0, 0.0))]


def pose_json(humans: list[dict], animals: list[list[Point]], height: int, width: int) -> dict:
    """The extension's `encode_poses_as_json` of these poses."""
    return {"people": [{"pose_keypoints_2d": _flat(p["body"]), "face_keypoints_2d": _flat(p["face"]),
                        "hand_left_keypoints_2d": _flat(p["left_hand"]),
                        "hand_right_keypoints_2d": _flat(p["right_hand"])} for p in humans],
            "animals": [_flat(a) for a in animals], "canvas_height": height, "canvas_width": width}


def draw_people(humans: list[dict], height: int, width: int) -> np.ndarray:
    """OpenPose's drawing of body, hands and face (it takes fractions of the canvas)."""
    op = open_pose()

    def keypoints(points):
        if not points:
            return None
        return [op.Keypoint(p[0] / width, p[1] / height) if p is not None else None for p in points]

    poses = [op.PoseResult(op.BodyResult(keypoints(p["body"]), 0.0, 18), keypoints(p["left_hand"]),
                           keypoints(p["right_hand"]), keypoints(p["face"])) for p in humans]
    return draw_poses(poses, height, width, body=True, hand=True, face=True)


def draw_animals(animals: list[list[Point]], height: int, width: int) -> np.ndarray:
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    for points in animals:
        for (a, b), colour in ANIMAL_LIMBS:
            (xa, ya), (xb, yb) = points[a], points[b]
            cv2.line(canvas, (int(xa), int(ya)), (int(xb), int(yb)), colour, ANIMAL_LIMB_WIDTH)
    return canvas


def _dw_openpose(img, a, b, ctx):
    detector, network = ctx.load(DETECTOR), ctx.load(WHOLEBODY)
    h, w = img.shape[:2]
    boxes = pose_onnx.detect(detector, img, PERSON)
    humans = []
    if boxes is not None:
        if len(boxes) == 0:  # candidates, but no person over 0.3: the extension's pose step reads the whole picture
            boxes = np.array([[0.0, 0.0, w, h]])
        humans = people(*pose_onnx.estimate(network, img, boxes, WHOLEBODY_INPUT))
    if ctx.on_pose is not None:
        ctx.on_pose(pose_json(humans, [], h, w))
    return draw_people(humans, h, w)


def _animal_openpose(img, a, b, ctx):
    detector, network = ctx.load(DETECTOR), ctx.load(ANIMAL)
    h, w = img.shape[:2]
    boxes = pose_onnx.detect(detector, img, ANIMALS)
    animals = []
    if boxes is not None and len(boxes):
        keypoints, _ = pose_onnx.estimate(network, img, boxes, ANIMAL_INPUT)
        animals = [[(float(x), float(y)) for x, y in points] for points in keypoints]
    if ctx.on_pose is not None:
        ctx.on_pose(pose_json([], animals, h, w))
    return draw_animals(animals, h, w)


# internal module name -> (runner, annotator files it reads)
RUNNERS: dict[str, tuple[Runner, tuple[str, ...]]] = {
    "dw_openpose_full": (padded(_dw_openpose), (DETECTOR, WHOLEBODY)),
    "animal_openpose": (padded(_animal_openpose), (DETECTOR, ANIMAL)),
}
