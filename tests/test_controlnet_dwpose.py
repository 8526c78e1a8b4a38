"""dw_openpose_full and animal_openpose on ONNX graphs (onnxruntime): the detector's boxes and the pose network's
SimCC peaks become the drawn map and the pose JSON as the extension makes them; missing, unreadable or wrong graphs
are 422s naming the file. The graphs are tiny stand-ins with the real I/O (loaders.demo.pose_graphs): the detector
finds the boxes it was built with whenever the picture is not black, and the pose graph puts each keypoint on the
dot of its colour channel."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from loaders.adapters import pose_onnx
from loaders.adapters.onnx_graphs import load_graph
from loaders.adapters.pose_onnx import ANIMAL, DETECTOR, GRAPHS, WHOLEBODY, WHOLEBODY_INPUT
from loaders.demo.pose_graphs import detector_bytes, install_pose_graphs, pose_bytes
from loaders.errors import InvalidRequest
from tests.test_controlnet import txt2img, unit
from tests.test_controlnet_annotators import detect
from tests.test_controlnet_api import cn_bytes, store  # noqa: F401  (the demo ControlNet in the bucket)

R, G, B = 0, 1, 2
WHOLE_PICTURE = ((0, 0, 64, 64), 0)  # a person box over all of a 64-pixel picture
# COCO-WholeBody rows: nose 0, left shoulder 5, right shoulder 6, face 23-90, left hand 91-111 (wrist 91)
BODY = {0: R, 5: G, 6: B, **{k: R for k in range(23, 91)}, 91: G, 92: R}
NOSE, LEFT_SHOULDER, RIGHT_SHOULDER = (32, 8), (48, 28), (16, 28)  # where the R, G and B dots are drawn
# AP-10K: eyes and nose on R, the neck on G, the rest on B
ANIMAL_POINTS = {0: R, 1: R, 2: R, 3: G, **{k: B for k in range(4, 17)}}


def dots_png(shift: int = 0, size: int = 64) -> str:
    """Black, with a 3×3 dot of pure red, green and blue at NOSE, LEFT_SHOULDER, RIGHT_SHOULDER (+ shift in x)."""
    img = np.zeros((size, size, 3), np.uint8)
    for channel, (x, y) in zip((R, G, B), (NOSE, LEFT_SHOULDER, RIGHT_SHOULDER)):
        img[y - 1:y + 2, x + shift - 1:x + shift + 2, channel] = 255
    return png(img)


def png(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def rgb_of(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def points(flat: list[float]) -> np.ndarray:
    return np.array(flat).reshape(-1, 3)


def near(point, where, tol=1.5) -> bool:
    return point[2] == 1 and np.abs(np.array(point[:2]) - where).max() <= tol


def test_dw_openpose_draws_the_people_the_graphs_find(client, store):
    install_pose_graphs(store, [WHOLE_PICTURE], body_channels=BODY)
    r = detect(client, "dw_openpose_full", [dots_png(), dots_png(shift=8), png(np.zeros((64, 64, 3), np.uint8))])
    assert r.status_code == 200, r.text
    first, shifted, black = (rgb_of(i) for i in r.json()["images"])
    poses = r.json()["poses"]
    (person,) = poses[0]["people"]
    body = points(person["pose_keypoints_2d"])
    assert body.shape == (18, 3) and (poses[0]["canvas_width"], poses[0]["canvas_height"]) == (64, 64)
    # OpenPose order, in canvas pixels as the extension's DWPose JSON: nose, neck (between the shoulders), right
    # shoulder (COCO 6), left shoulder (COCO 5); every other point scored 0 and is missing
    assert near(body[0], NOSE) and near(body[1], (32, 28)) and near(body[2], RIGHT_SHOULDER)
    assert near(body[5], LEFT_SHOULDER) and not body[[3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], 2].any()
    face, hand = points(person["face_keypoints_2d"]), points(person["hand_left_keypoints_2d"])
    assert face.shape == (70, 3) and all(near(p, NOSE) for p in face[:68]) and not face[68:, 2].any()
    assert hand.shape == (21, 3) and near(hand[0], LEFT_SHOULDER) and near(hand[1], NOSE) and not hand[2:, 2].any()
    assert person["hand_right_keypoints_2d"] is None
    # the drawing is OpenPose's: limbs at 60 % of their colour, face points white, hand edges in hue order
    assert first[18, 32].tolist() == [0, 0, 153]  # neck → nose, limb 13 (blue)
    assert first[28, 24].tolist() == [153, 0, 0]  # neck → right shoulder, limb 1 (red)
    assert first[8, 32].tolist() == [255, 255, 255]  # a face point on the nose
    assert first[18, 40].tolist() == [255, 0, 0]  # the hand's wrist → thumb edge, hue 0
    assert first[40:].max() == 0  # nothing below the shoulders
    # another picture, another map: the figure follows its dots
    assert not np.array_equal(shifted, first) and shifted[18, 40].tolist() == [0, 0, 153]  # its neck → nose
    assert near(points(poses[1]["people"][0]["pose_keypoints_2d"])[0], (NOSE[0] + 8, NOSE[1]))
    assert black.max() == 0 and poses[2]["people"] == []  # the detector finds nobody in a black picture


def test_dw_openpose_needs_both_graphs_and_refuses_wrong_ones(client, store):
    missing = detect(client, "dw_openpose_full", [dots_png()])
    assert missing.status_code == 422 and "models/annotators/openpose/yolox_l.onnx" in missing.json()["detail"]
    store.put_bytes(f"public/models/annotators/{DETECTOR}", detector_bytes([WHOLE_PICTURE]))
    missing = detect(client, "dw_openpose_full", [dots_png()])
    assert missing.status_code == 422 and "openpose/dw-ll_ucoco_384.onnx" in missing.json()["detail"]
    # the animal graph (17 keypoints at 256×256) where the whole-body one belongs
    store.put_bytes(f"public/models/annotators/{WHOLEBODY}", pose_bytes(pose_onnx.ANIMAL_INPUT, {}))
    wrong = detect(client, "dw_openpose_full", [dots_png()])
    assert wrong.status_code == 422 and "dw-ll_ucoco_384.onnx is not the graph this module runs" in wrong.text
    assert "[N, 3, 384, 288]" in wrong.text
    store.put_bytes(f"public/models/annotators/{WHOLEBODY}", b"\x0f\xff\xff not a protobuf")
    garbage = detect(client, "dw_openpose_full", [dots_png()])
    assert garbage.status_code == 422 and "dw-ll_ucoco_384.onnx is not a readable ONNX graph" in garbage.text
    # a graph is a program whose memory no check bounds: a user's own copy is refused, not run
    store.put_bytes(f"public/models/annotators/{WHOLEBODY}", pose_bytes(WHOLEBODY_INPUT, BODY))
    store.put_bytes(f"users/alice/models/annotators/{DETECTOR}", detector_bytes([WHOLE_PICTURE]))
    own = detect(client, "dw_openpose_full", [dots_png()])
    assert own.status_code == 422 and f"users/alice/models/annotators/{DETECTOR} is your own ONNX graph" in own.text
    store.delete(f"users/alice/models/annotators/{DETECTOR}")
    assert detect(client, "dw_openpose_full", [dots_png()]).status_code == 200


def test_animal_openpose_draws_the_animals(client, store):
    install_pose_graphs(store, [((0, 0, 64, 64), 16)], animal_channels=ANIMAL_POINTS)  # a dog (COCO 16)
    r = detect(client, "animal_openpose", [dots_png()])
    assert r.status_code == 200, r.text
    drawn = rgb_of(r.json()["images"][0])
    (pose,) = r.json()["poses"]
    assert pose["people"] == [] and len(pose["animals"]) == 1
    animal = points(pose["animals"][0])
    assert animal.shape == (17, 3) and near(animal[2], NOSE) and near(animal[3], LEFT_SHOULDER)
    assert all(near(p, RIGHT_SHOULDER) for p in animal[4:])
    assert drawn[18, 40].tolist() == [100, 50, 255]  # nose → neck, 5 px wide
    assert drawn[28, 32].tolist() == [255, 0, 255]  # neck → tail root, the last limb over the neck → body ones
    assert drawn[45:].max() == 0


def test_the_detector_classes_and_the_whole_picture_fallback(client, store):
    """A dog box: animal_openpose reads it; DWPose finds no person over 0.3 yet a candidate, and (as the
    extension) runs its pose network on the whole picture. A person box: animal_openpose draws nothing."""
    install_pose_graphs(store, [((0, 0, 64, 64), 16)], body_channels=BODY, animal_channels=ANIMAL_POINTS)
    r = detect(client, "dw_openpose_full", [dots_png()])
    assert near(points(r.json()["poses"][0]["people"][0]["pose_keypoints_2d"])[0], NOSE)
    install_pose_graphs(store, [WHOLE_PICTURE], animal_channels=ANIMAL_POINTS)
    r = detect(client, "animal_openpose", [dots_png()])
    assert r.status_code == 200 and rgb_of(r.json()["images"][0]).max() == 0 and r.json()["poses"][0]["animals"] == []


def test_a_dw_openpose_unit_in_txt2img_appends_its_map(client, store):
    install_pose_graphs(store, [WHOLE_PICTURE], body_channels=BODY)
    r = txt2img(client, [unit(module="dw_openpose_full", processor_res=64, image=dots_png())])
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 2  # the image, then the detected map
    alone = detect(client, "dw_openpose_full", [dots_png()]).json()["images"][0]
    assert np.array_equal(rgb_of(images[1]), rgb_of(alone)) and rgb_of(alone).max() > 0


class Rows:
    """A detector stand-in returning fixed anchor rows."""

    def __init__(self, rows):
        self.rows = rows

    def run(self, batch):
        return [self.rows[None]]


def anchor_rows(found: dict[int, tuple[float, float, float, float, float]]) -> np.ndarray:
    """8400×85 rows, zero but for `found`: index → (dx, dy, log w, log h, score) with class 0 at 1."""
    rows = np.zeros((pose_onnx.ANCHORS, 85), np.float32)
    for index, (*box, score) in found.items():
        rows[index, :5] = [*box, score]
        rows[index, 5] = 1.0
    return rows


def test_detect_thresholds_and_nms():
    img = np.zeros((64, 64, 3), np.uint8)
    cell = 8400 - 400 + 10 * 20 + 10  # the stride-32 cell at (320, 320)
    # a candidate (0.2 > 0.1) that is no box (< 0.3): an empty list, unlike nothing at all
    assert pose_onnx.detect(Rows(anchor_rows({cell: (0, 0, 1, 1, 0.2)})), img, (0,)).shape == (0, 4)
    assert pose_onnx.detect(Rows(anchor_rows({cell: (0, 0, 1, 1, 0.05)})), img, (0,)) is None
    # two boxes overlapping by more than 0.45 IoU: the better one stays; a third far away too; in picture pixels
    boxes = pose_onnx.detect(Rows(anchor_rows({cell: (0, 0, 1, 1, 0.9), cell + 1: (-0.1, 0, 1, 1, 0.8),
                                               cell - 9: (0, 0, 0, 0, 0.7)})), img, (0,))
    size = np.exp(1) * 32
    assert np.allclose(boxes, [[(320 - size / 2) / 10, (320 - size / 2) / 10, (320 + size / 2) / 10,
                                (320 + size / 2) / 10], [1.6, 30.4, 4.8, 33.6]], atol=1e-3)
    # wild rows (an overflowing size, NaN) are dropped, not drawn
    assert pose_onnx.detect(Rows(anchor_rows({cell: (0, 0, 800, 1, 0.9), cell + 1: (np.nan, 0, 1, 1, 0.9)})),
                            img, (0,)) is None


def onnx_file(tmp_path, graph_nodes, inputs, outputs, inits=()):
    from onnx import helper

    model = helper.make_model(helper.make_graph(graph_nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_graphs_with_external_data_or_control_flow_are_refused(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])
    y = helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576])
    external = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    external.ClearField("float_data")
    external.data_location = TensorProto.EXTERNAL
    external.external_data.add(key="location", value="/etc/passwd")
    path = onnx_file(tmp_path, [helper.make_node("Add", ["input", "w"], ["simcc_x"])], [x], [y], [external])
    with pytest.raises(InvalidRequest, match="external files"):
        load_graph(path, "g.onnx", GRAPHS[WHOLEBODY], "m")
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body", [], [])
    loop = helper.make_node("Loop", ["n", ""], ["simcc_x"], body=body)
    path = onnx_file(tmp_path, [loop], [x], [y])
    with pytest.raises(InvalidRequest, match="ai.onnx.Loop"):
        load_graph(path, "g.onnx", GRAPHS[WHOLEBODY], "m")
    assert GRAPHS[ANIMAL].input == (None, 3, 256, 256) and WHOLEBODY_INPUT.keypoints == 133


def test_hands_are_drawn_without_matplotlib():
    """controlnet-aux's hand drawing imports matplotlib, which this server lacks: OpenPose hands (openpose_hand,
    openpose_full) and DWPose's are drawn by pose_drawing, missing points skipped."""
    import sys

    from loaders.adapters.annotator_nets import open_pose
    from loaders.adapters.pose_drawing import draw_poses

    op = open_pose()
    hand = [op.Keypoint(0.5, 0.5), op.Keypoint(0.5, 0.8)] + [None] * 19
    pose = op.PoseResult(op.BodyResult([None] * 18, 0.0, 18), hand, None, [op.Keypoint(0.25, 0.25), None])
    canvas = draw_poses([pose], 64, 64, body=True, hand=True, face=True)
    assert canvas[42, 32].tolist() == [255, 0, 0]  # the wrist → thumb edge, hue 0
    assert canvas[32, 32].tolist() == [0, 0, 255] and canvas[16, 16].tolist() == [255, 255, 255]  # points
    assert (canvas > 0).any(axis=2).sum() < 250 and "matplotlib" not in sys.modules


def test_a_graph_run_past_its_time_is_stopped(tmp_path):
    """A graph declaring the right ports can still compute for long (here 30 chained 4608×288×288 MatMuls):
    onnxruntime is told to stop once the run outlasts its bound, and the request gets a 422."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Reshape", ["input", "flat"], ["a"]), helper.make_node("Tile", ["a", "rep"], ["m-1"])]
    inits = [helper.make_tensor("flat", TensorProto.INT64, [2], [1152, 288]),
             helper.make_tensor("rep", TensorProto.INT64, [2], [4, 1]),
             helper.make_tensor("w", TensorProto.FLOAT, [288, 288], np.full(288 * 288, 1e-3, np.float32)),
             helper.make_tensor("sx", TensorProto.INT64, [3], [1, 133, 576]),
             helper.make_tensor("sy", TensorProto.INT64, [3], [1, 133, 768])]
    nodes += [helper.make_node("MatMul", [f"m{i - 1}", "w"], [f"m{i}"]) for i in range(30)]
    nodes += [helper.make_node("ReduceMax", ["m29"], ["top"], keepdims=0),
              helper.make_node("Expand", ["top", "sx"], ["simcc_x"]),
              helper.make_node("Expand", ["top", "sy"], ["simcc_y"])]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])
    outs = [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 768])]
    graph = load_graph(onnx_file(tmp_path, nodes, [x], outs, inits), "slow.onnx", GRAPHS[WHOLEBODY], "m")
    graph.max_run_s = 0.01
    with pytest.raises(InvalidRequest, match="slow.onnx ran for over 0.01 s and was stopped"):
        graph.run(np.zeros((1, 3, 384, 288), np.float32))


def test_at_most_max_boxes_people_are_posed_the_best_ones():
    """Each box costs a pose-network run: of 100 separate people, the 64 best scoring are kept, best first."""
    cells = [(2 * i % 80, 2 * (2 * i // 80)) for i in range(100)]  # every other stride-8 cell: no two overlap
    rows = anchor_rows({gy * 80 + gx: (0, 0, 0, 0, 0.3 + 0.005 * (i + 1)) for i, (gx, gy) in enumerate(cells)})
    boxes = pose_onnx.detect(Rows(rows), np.zeros((64, 64, 3), np.uint8), (0,))
    assert len(boxes) == pose_onnx.MAX_BOXES == 64
    centres = [tuple(np.round((b[:2] + b[2:]) / 2 * 10 / 8).astype(int)) for b in boxes]
    assert centres == [cells[i] for i in range(99, 35, -1)]
