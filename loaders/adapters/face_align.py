"""Align faces to the FFHQ template and paste restored faces back, as facexlib's FaceRestoreHelper does for A1111
(`face_size=512`, `crop_ratio=(1, 1)`, `upscale_factor=1`).

Each face's 5 landmarks are mapped onto the template by a similarity transform (`estimateAffinePartial2D`,
LMEDS, as facexlib), the 512² crop is warped out with facexlib's grey border, and the restored crop goes back
with the inverse transform under a mask. A1111 asks facexlib for the face-parsing mask (`use_parse=True`): with
ParseNet installed, each face brings that mask (loaders.adapters.face_parsing), warped back as facexlib warps it.
Without it, facexlib's square-mask path: the warped square, eroded and Gaussian-blurred by a margin that grows
with the face. Pixels outside every face's mask are left exactly as they were.
"""

from __future__ import annotations

import numpy as np

FACE_SIZE = 512
# facexlib's 5-point FFHQ template for a 512² face (image-left eye, image-right eye, nose, mouth corners)
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
BORDER_RGB = (132, 133, 135)  # facexlib's warp border, (135, 133, 132) in its BGR


def align(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The face's 512² RGB crop and its 2×3 affine matrix; None when the points admit no transform."""
    import cv2

    matrix = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), FFHQ_TEMPLATE, method=cv2.LMEDS)[0]
    if matrix is None:
        return None
    crop = cv2.warpAffine(rgb, matrix, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_CONSTANT,
                          borderValue=BORDER_RGB)
    return crop, matrix


def paste_back(rgb: np.ndarray, restored: list[tuple[np.ndarray, np.ndarray]],
               masks: list[np.ndarray] | None = None) -> np.ndarray:
    """The picture with each (restored 512² crop, affine matrix) blended back in place, in order, under its
    parsing mask (512², 0..1) when `masks` are given, else the feathered square. Each face is worked on inside
    its own box (with room for the feathering), so a face costs its size, not the picture's."""
    out = rgb.astype(np.float32)
    for index, (face, matrix) in enumerate(restored):
        _blend_face(out, face, matrix, None if masks is None else masks[index])
    return out.astype(np.uint8)  # truncated, as facexlib's paste_faces_to_input_image


def _blend_face(out: np.ndarray, face: np.ndarray, matrix: np.ndarray, parsed: np.ndarray | None) -> None:
    import cv2

    inverse = cv2.invertAffineTransform(matrix)
    side = FACE_SIZE * abs(np.linalg.det(inverse[:, :2])) ** 0.5  # the face's side in the picture
    margin = 2 * (int(side) // 20) + 4  # beyond the widest feathering below: the box's edge stays outside it
    corners = np.array([[0, 0], [FACE_SIZE, 0], [0, FACE_SIZE], [FACE_SIZE, FACE_SIZE]], np.float32)
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    h, w = out.shape[:2]
    x0, y0 = (max(0, int(np.floor(v)) - margin) for v in mapped.min(axis=0))
    x1, y1 = min(w, int(np.ceil(mapped[:, 0].max())) + margin), min(h, int(np.ceil(mapped[:, 1].max())) + margin)
    if x1 <= x0 or y1 <= y0:
        return  # the face lies outside the picture
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    back = cv2.warpAffine(face, shifted, size).astype(np.float32)
    region = out[y0:y1, x0:x1]
    if parsed is not None:  # facexlib's use_parse path: the mask warped with flags=3, the face pasted unmasked
        soft = cv2.warpAffine(parsed, shifted, size, flags=3)[:, :, None]
        out[y0:y1, x0:x1] = soft * back + (1 - soft) * region
        return
    mask = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), shifted, size)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))  # drop the interpolated black rim
    edge = int(float(mask.sum()) ** 0.5) // 20  # feather width: 5 % of the face's side (facexlib)
    if edge > 0:
        inner = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
        soft = cv2.GaussianBlur(inner, (2 * edge + 1, 2 * edge + 1), 0)
    else:
        soft = mask
    soft = soft[:, :, None]
    out[y0:y1, x0:x1] = soft * (mask[:, :, None] * back) + (1 - soft) * region
