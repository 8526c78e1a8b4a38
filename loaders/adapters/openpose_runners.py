"""The OpenPose family (openpose, _hand, _face, _faceonly, _full) on controlnet-aux's OpenposeDetector.

As the extension's `OpenposeModel.run_model`: the padded image (BGR inside the detector) → bodies from the body
network, then for each body its hands (hand network on the crops `handDetect` picks) and its face (face network on
the crop `faceDetect` picks) when the module wants them, drawn on black with the extension's colours
(`pose_drawing`). Only the files a module uses are read (the extension loads all three whatever the module).
"""

from __future__ import annotations

import numpy as np

from loaders.adapters.annotator_nets import open_pose
from loaders.adapters.annotator_runners import Runner, padded
from loaders.adapters.pose_drawing import draw_poses

BODY = "openpose/body_pose_model.safetensors"
HAND = "openpose/hand_pose_model.safetensors"
FACE = "openpose/facenet.safetensors"


def _estimator(cls, model, **attrs):
    """A controlnet-aux Body/Hand/Face around our loaded network: their constructors read `.pth` files themselves
    (torch.load, a pickle), so the object is made without it and given the network it would have built."""
    estimator = cls.__new__(cls)
    estimator.model = model
    for key, value in attrs.items():
        setattr(estimator, key, value)
    return estimator


def openpose(body: bool, hand: bool, face: bool) -> Runner:
    def run(img, a, b, ctx):
        import torch

        op = open_pose()
        bodies = _estimator(op.Body, ctx.load(BODY))
        hands = _estimator(op.Hand, ctx.load(HAND)) if hand else None
        faces = None
        if face:
            params = op.face.params
            faces = _estimator(op.Face, ctx.load(FACE), inference_size=params["inference_img_size"],
                               sigma=params["gaussian_sigma"], threshold=params["heatmap_peak_thresh"])
        detector = op.OpenposeDetector(bodies, hands, faces)
        h, w = img.shape[:2]
        with torch.inference_mode():
            poses = detector.detect_poses(np.ascontiguousarray(img), include_hand=hand, include_face=face)
        if ctx.on_pose is not None:
            ctx.on_pose(pose_json(poses, h, w))
        return draw_poses(poses, h, w, body=body, hand=hand, face=face)

    return padded(run)


def _flat(keypoints) -> list[float] | None:
    """[x, y, 1] per keypoint (x, y as fractions of the canvas), [0, 0, 0] for a missing one; None for no part."""
    if not keypoints:
        return None
    return [v for k in keypoints for v in ((float(k.x), float(k.y), 1.0) if k is not None else (0.0, 0.0, 0.0))]


def pose_json(poses, height: int, width: int) -> dict:
    """The poses in the OpenPose JSON format the extension's `encode_poses_as_json` writes (canvas: the padded
    image the detector saw, as there)."""
    people = [{"pose_keypoints_2d": _flat(p.body.keypoints), "face_keypoints_2d": _flat(p.face),
               "hand_left_keypoints_2d": _flat(p.left_hand), "hand_right_keypoints_2d": _flat(p.right_hand)}
              for p in poses]
    return {"people": people, "animals": [], "canvas_height": height, "canvas_width": width}


def weights(hand: bool, face: bool) -> tuple[str, ...]:
    return (BODY, *((HAND,) if hand else ()), *((FACE,) if face else ()))


# internal module name -> (runner, annotator files it reads), the extension's include_body/hand/face per module
RUNNERS: dict[str, tuple[Runner, tuple[str, ...]]] = {
    name: (openpose(body, hand, face), weights(hand, face))
    for name, body, hand, face in [("openpose", True, False, False), ("openpose_hand", True, True, False),
                                   ("openpose_face", True, False, True), ("openpose_faceonly", False, False, True),
                                   ("openpose_full", True, True, True)]
}
