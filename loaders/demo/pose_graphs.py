"""Tiny ONNX graphs with the I/O names and shapes of DWPose's files (YOLOX-L `yolox_l.onnx`, RTMPose
`dw-ll_ucoco_384.onnx` and the AP-10K animal model), for tests and benches. Their outputs are simple functions of the
input, so a test knows what the runner must find:
- the detector gives the boxes it is built with (any COCO class), each with objectness = the brightest input value
  / 255 (a black picture: nobody);
- the pose graph places keypoint k at the brightest column and row of one colour channel of its crop (R, G or B, as
  built; an unassigned keypoint scores 0), so a dot of pure colour in the picture is where those keypoints land.
"""

from __future__ import annotations

import math

import numpy as np

from loaders.adapters.annotators import ANNOTATOR_DIR
from loaders.adapters.pose_onnx import (ANCHORS, ANIMAL, ANIMAL_INPUT, COCO_CLASSES, DETECT_SIDE, DETECTOR, STRIDES,
                                        WHOLEBODY, WHOLEBODY_INPUT, PoseInput)

OPSET = 17  # ReduceMax still takes `axes` as an attribute


def _const(name: str, value, dtype=np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _anchor_row(box, taken: set[int]) -> tuple[int, list[float]]:
    """An anchor row index (the coarsest free cell holding the box centre) and its 4 box numbers there."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    start = ANCHORS
    for stride in reversed(STRIDES):
        side = DETECT_SIDE // stride
        start -= side * side
        gx, gy = min(int(cx // stride), side - 1), min(int(cy // stride), side - 1)
        index = start + gy * side + gx
        if index not in taken:
            return index, [cx / stride - gx, cy / stride - gy, math.log(w / stride), math.log(h / stride)]
    raise ValueError(f"no free anchor left for {box}")


def detector_bytes(boxes: list[tuple[tuple[float, float, float, float], int]], ratio: float = 10.0) -> bytes:
    """A 1×3×640×640 → 1×8400×85 graph finding `boxes` ((x0, y0, x1, y1) in picture pixels, COCO class), for a
    picture that the detector's letterbox scales by `ratio` (10 for a 64-pixel square)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMax", ["images"], ["brightest"], keepdims=1),
             helper.make_node("Div", ["brightest", "c255"], ["objectness4"]),
             helper.make_node("Reshape", ["objectness4", "shape111"], ["objectness"])]
    inits = [_const("c255", 255.0), _const("shape111", [1, 1, 1], np.int64)]
    taken: dict[int, str] = {}
    for i, (box, cls) in enumerate(boxes):
        index, numbers = _anchor_row([v * ratio for v in box], set(taken))
        classes = np.zeros((1, 1, COCO_CLASSES), np.float32)
        classes[0, 0, cls] = 1.0
        inits += [_const(f"box{i}", np.array(numbers).reshape(1, 1, 4)), _const(f"classes{i}", classes)]
        nodes.append(helper.make_node("Concat", [f"box{i}", "objectness", f"classes{i}"], [f"row{i}"], axis=2))
        taken[index] = f"row{i}"
    pieces, at = [], 0
    for index in sorted(taken):
        pieces += _zeros(index - at, nodes, inits) + [taken[index]]
        at = index + 1
    pieces += _zeros(ANCHORS - at, nodes, inits)
    nodes.append(helper.make_node("Concat", pieces, ["output"], axis=1))
    graph = helper.make_graph(nodes, "yolox_stand_in",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, DETECT_SIDE,
                                                                                           DETECT_SIDE])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                             [1, ANCHORS, 5 + COCO_CLASSES])], inits)
    return _model_bytes(graph)


def _zeros(rows: int, nodes: list, inits: list) -> list[str]:
    """A 1×rows×85 block of zeros (made by ConstantOfShape: nothing stored), none for 0 rows."""
    from onnx import helper

    if rows == 0:
        return []
    name = f"zeros{len(nodes)}"
    inits.append(_const(f"{name}_shape", [1, rows, 5 + COCO_CLASSES], np.int64))
    nodes.append(helper.make_node("ConstantOfShape", [f"{name}_shape"], [name]))
    return [name]


def pose_bytes(size: PoseInput, channels: dict[int, int]) -> bytes:
    """A 1×3×H×W → (1×K×2W `simcc_x`, 1×K×2H `simcc_y`) graph: keypoint k peaks where channel `channels[k]` of
    the crop is brightest (each pixel is two SimCC bins), unassigned keypoints are all zeros (score 0)."""
    from onnx import TensorProto, helper

    assign = np.zeros((3, size.keypoints), np.float32)
    for keypoint, channel in channels.items():
        assign[channel, keypoint] = 1.0
    nodes, inits = [], [_const("assign", assign)]
    for axis_out, reduced, length in (("simcc_x", 2, size.width), ("simcc_y", 3, size.height)):
        p = axis_out
        inits += [_const(f"{p}_col", [1, 3, length, 1], np.int64), _const(f"{p}_flat", [1, 3, 2 * length], np.int64)]
        nodes += [helper.make_node("ReduceMax", ["input"], [f"{p}_profile"], axes=[reduced], keepdims=0),
                  helper.make_node("Reshape", [f"{p}_profile", f"{p}_col"], [f"{p}_column"]),
                  helper.make_node("Concat", [f"{p}_column", f"{p}_column"], [f"{p}_twice"], axis=3),
                  helper.make_node("Reshape", [f"{p}_twice", f"{p}_flat"], [f"{p}_bins"]),
                  helper.make_node("Transpose", [f"{p}_bins"], [f"{p}_t"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", [f"{p}_t", "assign"], [f"{p}_k"]),
                  helper.make_node("Transpose", [f"{p}_k"], [axis_out], perm=[0, 2, 1])]
    graph = helper.make_graph(
        nodes, "rtmpose_stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size.height, size.width])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, size.keypoints, 2 * size.width]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, size.keypoints, 2 * size.height])], inits)
    return _model_bytes(graph)


def _model_bytes(graph) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="easel-demo")
    model.ir_version = 8  # what onnxruntime reads for opset 17
    onnx.checker.check_model(model)
    return model.SerializeToString()


def install_pose_graphs(store, boxes, body_channels: dict[int, int] | None = None,
                        animal_channels: dict[int, int] | None = None, namespace: str = "public/") -> None:
    """Writes the detector (with `boxes`) and the whole-body and animal pose graphs where the server looks."""
    files = {DETECTOR: detector_bytes(boxes)}
    if body_channels is not None:
        files[WHOLEBODY] = pose_bytes(WHOLEBODY_INPUT, body_channels)
    if animal_channels is not None:
        files[ANIMAL] = pose_bytes(ANIMAL_INPUT, animal_channels)
    for filename, data in files.items():
        store.put_bytes(f"{namespace}{ANNOTATOR_DIR}/{filename}", data)
