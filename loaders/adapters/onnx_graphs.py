"""ONNX graphs of model-based preprocessors (DWPose's YOLOX and RTMPose), run with onnxruntime on the CPU.

An ONNX file is a program, not only weights, and it may come from a user's own namespace, so before onnxruntime sees
it: its size is bounded, it must carry its tensors inside (external data would name other files on this machine),
its operators are the standard domain's without control flow (Loop/Scan/If: a run's length would not follow from
the graph's size) and without local functions, and its inputs and outputs must have the shapes the runner feeds
and reads. Sessions use the process's torch thread count (EASEL_CPU_THREADS), no spinning threads, no memory arena
(a cached session does not keep its peak activations), and a run is stopped after MAX_RUN_S (a graph's operators
can still be made arbitrarily heavy: the published YOLOX-L takes seconds on a CPU, RTMPose a fraction of one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loaders.errors import InvalidRequest

MAX_GRAPH_BYTES = 2**31 - 1  # protobuf's cap on one message: the most a single-file ONNX graph can be
REFUSED_OPS = frozenset({"Loop", "Scan", "If", "SequenceMap"})
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
MAX_RUN_S = 120.0  # one network run; onnxruntime stops it at the next operator when this passes

Dims = tuple[int | None, ...]  # None: any size (a symbolic dimension, e.g. the batch)


@dataclass(frozen=True)
class GraphSpec:
    """What a runner feeds (one float32 input) and reads (its outputs, in order)."""

    input: Dims
    outputs: tuple[Dims, ...]

    @staticmethod
    def fits(dims: Dims, shape) -> bool:
        """Whether a declared or actual shape matches `dims` (a symbolic declared dimension fits any size)."""
        return len(shape) == len(dims) and all(
            want is None or not isinstance(got, int) or got == want for want, got in zip(dims, shape))


class Graph:
    """A loaded, checked session: `run(x)` returns its outputs, each checked against the spec's shape."""

    def __init__(self, session, spec: GraphSpec, name: str, max_run_s: float = MAX_RUN_S):
        self.session, self.spec, self.name, self.max_run_s = session, spec, name, max_run_s
        self.input_name = session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        import onnxruntime as ort

        options = ort.RunOptions()
        timer = threading.Timer(self.max_run_s, lambda: setattr(options, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)}, options)
        except Exception as e:  # onnxruntime's own errors: a graph that declares shapes it does not compute
            if options.terminate:
                raise InvalidRequest(f"{self.name} ran for over {self.max_run_s:g} s and was stopped") from None
            raise InvalidRequest(f"{self.name} failed to run: {e}"[:400]) from None
        finally:
            timer.cancel()
        for dims, out in zip(self.spec.outputs, outputs):
            if not GraphSpec.fits(dims, out.shape):
                raise InvalidRequest(f"{self.name} returned an output of shape {list(out.shape)}, "
                                     f"not {_shown(dims)}")
        return outputs


def load_graph(path: Path, name: str, spec: GraphSpec, field: str) -> Graph:
    """The checked session of the ONNX file at `path` (`name`: its bucket key, for messages); 422 otherwise."""
    import onnx

    size = Path(path).stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise InvalidRequest(f"`{field}`: {name} is over {MAX_GRAPH_BYTES / 2**20:,.0f} MB, more than one ONNX "
                             "file can hold")
    data = Path(path).read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise InvalidRequest(f"`{field}`: {name} is not a readable ONNX graph ({e})"[:400]) from None
    _check_contents(model, name, field)
    session = _session(data, name, field)
    _check_ports(session, spec, name, field)
    return Graph(session, spec, name)


def _tensors(model):
    graph = model.graph
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _check_contents(model, name: str, field: str) -> None:
    from onnx import TensorProto

    if any(t.data_location == TensorProto.EXTERNAL or t.external_data for t in _tensors(model)):
        raise InvalidRequest(f"`{field}`: {name} keeps tensors in external files; only self-contained ONNX "
                             "graphs are loaded")
    if model.functions:
        raise InvalidRequest(f"`{field}`: {name} defines local functions, which these graphs do not use")
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS or node.op_type in REFUSED_OPS or any(
                attr.HasField("g") or attr.graphs for attr in node.attribute):
            raise InvalidRequest(f"`{field}`: {name} uses the operator {node.domain or 'ai.onnx'}.{node.op_type}, "
                                 "which a pose graph does not need (standard operators without control flow only)")


def _session(data: bytes, name: str, field: str):
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: a graph's warnings are not the server's
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # InvalidGraph, unsupported opset, type errors...
        raise InvalidRequest(f"`{field}`: onnxruntime cannot load {name}: {e}"[:400]) from None


def _check_ports(session, spec: GraphSpec, name: str, field: str) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problem = None
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or not GraphSpec.fits(spec.input, inputs[0].shape):
        problem = f"inputs {_declared(inputs)}, where one float input {_shown(spec.input)} is needed"
    elif len(outputs) != len(spec.outputs) or not all(
            GraphSpec.fits(dims, out.shape) for dims, out in zip(spec.outputs, outputs)):
        problem = (f"outputs {_declared(outputs)}, where {', '.join(_shown(d) for d in spec.outputs)} "
                   "are needed")
    if problem:
        raise InvalidRequest(f"`{field}`: {name} is not the graph this module runs: it has {problem}")


def _shown(dims: Dims) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"


def _declared(ports) -> str:
    return "; ".join(f"{p.name} {p.type} {list(p.shape)}" for p in ports) or "none"
