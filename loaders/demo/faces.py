"""Face-restoration models for tests and demos, written from nothing (no download):

- GFPGAN (v1 clean, the GFPGANv1.4 layout) and CodeFormer state dicts with random weights, as `.safetensors`
  (fp16: half the bytes; the loader runs them in fp32). spandrel builds GFPGAN at its one full size (it does
  not read the sizes from the file), so that writer is full size; CodeFormer's transformer is small (its
  width, depth and codebook are read from the file), its VQGAN is the real one.
- RetinaFace-ResNet50 (`detection_Resnet50_Final`) and ParseNet (`parsing_parsenet`) state dicts, in facexlib's
  layouts, with random weights (fp16 `.safetensors`: ~55 and ~43 MB; the real fp32 files ~105 and ~85 MB).
- A YuNet-format ONNX face detector (`cv2.FaceDetectorYN` reads it like face_detection_yunet_2023mar.onnx: one
  input, the 12 outputs cls/obj/bbox/kps at strides 8, 16 and 32). Not a trained network: a few fixed layers
  that report one face, centred on the brightest 32-pixel cell of the picture, when that cell is brighter than
  `min_brightness`, with its 5 landmarks laid out like the FFHQ template. Tests draw a bright face on a darker
  background and know where it must be found.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from safetensors.torch import save

from loaders.adapters.face_parsing import parsenet_network
from loaders.adapters.face_restorers import spandrel_with_face_arches
from loaders.adapters.retinaface import retinaface_network

# Landmarks inside a detected box, as fractions of its side (the FFHQ template's layout in its 512² square).
_KPS_LAYOUT = [(0.377, 0.469), (0.623, 0.469), (0.501, 0.613), (0.393, 0.725), (0.611, 0.725)]


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state dict: matrices and kernels random with a 1/sqrt(fan-in) spread (so
    activations stay in range through the deep stacks), norms' weights 1, the rest 0. Cut from one pool of
    normal values with numpy (torch's elementwise ops are several times slower for the full-size GFPGAN's
    87 M numbers on a busy CPU)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(1 << 20).astype(np.float32)
    out = {}
    for key, value in model.state_dict().items():
        shape, n = tuple(value.shape), value.numel()
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked: an int64 count, as trained files have
            out[key] = torch.zeros(shape, dtype=value.dtype)
            continue
        if value.dim() >= 2:
            scaled = (np.roll(pool, -int(rng.integers(pool.size))) / math.sqrt(max(1, n // shape[0])))
            array = np.resize(scaled.astype(np.float16), n).reshape(shape)
        else:
            # norm scales and running variances 1 (a variance of 0 would blow activations up), the rest 0
            array = np.full(shape, 1.0 if key.endswith(("weight", "running_var")) else 0.0, np.float16)
        out[key] = torch.from_numpy(np.ascontiguousarray(array))
    return out


def gfpgan_bytes(seed: int = 0) -> bytes:
    """A random GFPGANv1Clean (out 512, 512 style features, channel multiplier 2: GFPGANv1.3/1.4's shapes)."""
    spandrel_with_face_arches()
    from spandrel.architectures.GFPGAN import GFPGAN

    with torch.device("meta"):
        model = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                       fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    return save(_random_state(model, seed))


def codeformer_bytes(seed: int = 0, dim_embd: int = 64, n_layers: int = 1, codebook_size: int = 64) -> bytes:
    """A random CodeFormer (v0.1.0's VQGAN and connections; a narrow, shallow transformer and codebook)."""
    spandrel_with_face_arches()
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    with torch.device("meta"):
        model = CodeFormer(dim_embd=dim_embd, n_head=8, n_layers=n_layers, codebook_size=codebook_size,
                           latent_size=256, connect_list=["32", "64", "128", "256"])
    return save(_random_state(model, seed))


def retinaface_bytes(seed: int = 0) -> bytes:
    """A random RetinaFace-ResNet50 with every key of facexlib's detection_Resnet50_Final."""
    with torch.device("meta"):
        model = retinaface_network()
    return save(_random_state(model, seed))


def parsenet_bytes(seed: int = 0) -> bytes:
    """A random ParseNet(512, 512, 19 classes) with every key of facexlib's parsing_parsenet."""
    with torch.device("meta"):
        model = parsenet_network()
    return save(_random_state(model, seed))


def yunet_onnx_bytes(box_px: float = 160.0, min_brightness: float = 128.0) -> bytes:
    """The bright-cell face detector described above, for pictures of any size (multiples of 32 after
    FaceDetectorYN's padding). `box_px`: the face box's side in the detector's input pixels."""
    import onnx
    from onnx import TensorProto, helper

    def const(name, values, dtype=TensorProto.FLOAT):
        array = np.asarray(values, np.float32 if dtype == TensorProto.FLOAT else np.int64)
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_v", dtype, array.shape, array.flatten().tolist()))

    nodes = [const("shape", [1, -1, 1], TensorProto.INT64), const("zero", [0.0]),
             const("bright", [float(min_brightness)]),
             helper.make_node("ReduceMean", ["input"], ["gray"], keepdims=1, axes=[1])]
    outputs = []
    for stride in (8, 16, 32):
        s = str(stride)
        nodes += [helper.make_node("AveragePool", ["gray"], ["pool" + s], kernel_shape=[stride, stride],
                                   strides=[stride, stride]),
                  helper.make_node("Reshape", ["pool" + s, "shape"], ["cells" + s]),
                  helper.make_node("Mul", ["cells" + s, "zero"], ["zeros" + s])]
        if stride == 32:  # score 1 on the brightest cell (ties: all of them), ~0 a gray level below it
            nodes += [helper.make_node("ReduceMax", ["cells32"], ["top"], keepdims=1),
                      helper.make_node("Sub", ["cells32", "top"], ["below"]),
                      const("steep", [20.0]), helper.make_node("Mul", ["below", "steep"], ["logit"]),
                      helper.make_node("Add", ["logit", "steep"], ["logit1"]),  # 0 below the top: sigmoid(20)
                      helper.make_node("Sigmoid", ["logit1"], ["cls_32"]),
                      helper.make_node("Sub", ["top", "bright"], ["over"]),  # the top must be bright enough
                      helper.make_node("Mul", ["over", "steep"], ["obj_logit"]),
                      helper.make_node("Sigmoid", ["obj_logit"], ["obj_one"]),
                      helper.make_node("Add", ["zeros32", "obj_one"], ["obj_32"])]
        else:  # no faces at the finer strides
            nodes += [helper.make_node("Identity", ["zeros" + s], ["cls_" + s]),
                      helper.make_node("Identity", ["zeros" + s], ["obj_" + s])]
        size = math.log(box_px / stride)
        kps = [v for x, y in _KPS_LAYOUT for v in (0.5 + (x - 0.5) * box_px / stride, 0.5 + (y - 0.5) * box_px / stride)]
        nodes += [const("box" + s, [[[0.5, 0.5, size, size]]]), const("kp" + s, [[kps]]),
                  helper.make_node("Add", ["zeros" + s, "box" + s], ["bbox_" + s]),
                  helper.make_node("Add", ["zeros" + s, "kp" + s], ["kps_" + s])]
        outputs += [(f"{head}_{s}", width) for head, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))]
    graph = helper.make_graph(
        nodes, "yunet_bright_cell",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "n", width]) for name, width in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
