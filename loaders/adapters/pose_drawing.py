"""OpenPose's drawing of bodies, hands and faces on black (the extension's `draw_poses`), keypoints as fractions of
the canvas. Bodies and faces are drawn by controlnet-aux's functions; hands here, because controlnet-aux's
`draw_handpose` imports matplotlib for one HSV→RGB conversion, and this server does not install matplotlib. Missing
points (None) are skipped, as the extension's drawing skips them (DWPose leaves out low-scoring ones).
"""

from __future__ import annotations

import colorsys

import numpy as np

from loaders.adapters.annotator_nets import open_pose

# a hand's 21 points: the wrist (0), then four per finger from its base; each edge has its own hue
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
EPS = 0.01  # a point at the canvas's top or left edge (x or y under 1 pixel) is not drawn, as OpenPose's "missing"
HAND_POINT_COLOUR = (0, 0, 255)


def draw_hand(canvas: np.ndarray, keypoints) -> np.ndarray:
    import cv2

    if not keypoints:
        return canvas
    h, w = canvas.shape[:2]
    pixels = [None if k is None else (int(k.x * w), int(k.y * h)) for k in keypoints]
    for i, (a, b) in enumerate(HAND_EDGES):
        if pixels[a] is None or pixels[b] is None or min(*pixels[a], *pixels[b]) <= EPS:
            continue
        colour = tuple(c * 255 for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
        cv2.line(canvas, pixels[a], pixels[b], colour, thickness=2)
    for point in pixels:
        if point is not None and min(point) > EPS:
            cv2.circle(canvas, point, 4, HAND_POINT_COLOUR, thickness=-1)
    return canvas


def draw_poses(poses, height: int, width: int, *, body: bool, hand: bool, face: bool) -> np.ndarray:
    """`poses`: controlnet-aux PoseResults (body keypoints, left and right hand, face; None where missing)."""
    util = open_pose().util
    canvas = np.zeros((height, width, 3), np.uint8)
    for pose in poses:
        if body:
            canvas = util.draw_bodypose(canvas, pose.body.keypoints)
        if hand:
            canvas = draw_hand(draw_hand(canvas, pose.left_hand), pose.right_hand)
        if face and pose.face:
            canvas = util.draw_facepose(canvas, [k for k in pose.face if k is not None])
    return canvas
