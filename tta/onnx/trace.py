"""Tracing a prepared module to ONNX with either exporter, and writing the calling convention into the file.

:func:`tta.onnx.export.export_onnx` prepares the module (a folded or batch-statistics copy, wrapped with
its EMA state) and checks the result; this module runs ``torch.onnx.export`` (``dynamo`` or
``torchscript``), names the graph's inputs and outputs, makes the EMA state inputs optional and stores
the convention in the model's metadata (see :mod:`tta.onnx.export` for the convention itself).
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Literal, TypedDict

import torch
from torch import Tensor, nn

from tta.onnx.lame import LameGraph
from tta.onnx.layers import StatefulGraph

if TYPE_CHECKING:
    import onnx

__all__ = ["Exporter", "INPUT_NAME", "OUTPUT_NAME", "STATE_IN", "STATE_OUT", "annotate", "trace"]

Exporter = Literal["dynamo", "torchscript"]
INPUT_NAME, OUTPUT_NAME = "input", "logits"
STATE_IN, STATE_OUT = "ema_in.", "ema_out."


class _CommonArgs(TypedDict):
    """Keyword arguments both exporters receive."""

    input_names: list[str]
    output_names: list[str]
    opset_version: int


def trace(
    graph: nn.Module, example: Tensor, state: list[Tensor], opset: int, dynamic_batch: bool, exporter: Exporter
) -> tuple[onnx.ModelProto, tuple[str, ...], tuple[str, ...]]:
    """Export with the chosen exporter; return the model and its input and output names."""
    names = _state_names(graph)
    input_names = (INPUT_NAME, *(STATE_IN + n for n in names))
    output_names = (OUTPUT_NAME, *(STATE_OUT + n for n in names))
    x = example
    if dynamic_batch and x.shape[0] == 1:
        x = x.expand(2, *x.shape[1:]).contiguous()  # torch.export specializes a size-1 axis to a constant
    args: tuple[object, ...] = (x, [t.detach() for t in state]) if state else (x,)
    common = _CommonArgs(input_names=list(input_names), output_names=list(output_names), opset_version=opset)
    with torch.no_grad(), warnings.catch_warnings():
        if exporter == "dynamo":
            proto = _export_dynamo(graph, args, len(state), dynamic_batch, common)
        else:
            proto = _export_torchscript(graph, args, dynamic_batch, common)
    return proto, input_names, output_names


def _export_dynamo(
    graph: nn.Module, args: tuple[object, ...], n_state: int, dynamic_batch: bool, common: _CommonArgs
) -> onnx.ModelProto:
    dynamic_shapes = None
    if dynamic_batch:
        batch = {0: torch.export.Dim("batch")}
        dynamic_shapes = (batch, [None] * n_state) if n_state else (batch,)
    # We name the batch axis ourselves (see annotate); the exporter's renaming skips list inputs.
    warnings.filterwarnings("ignore", message=".*dynamic axes will not be renamed")
    program = torch.onnx.export(
        graph, args, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False, optimize=True, **common
    )
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program; expected an ONNXProgram")
    return program.model_proto


def _export_torchscript(
    graph: nn.Module, args: tuple[object, ...], dynamic_batch: bool, common: _CommonArgs
) -> onnx.ModelProto:
    import onnx

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the caller chose this exporter
    warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buffer = io.BytesIO()
    # torch types `f` as a path, but the TorchScript exporter also writes to a file object.
    torch.onnx.export(graph, args, buffer, dynamo=False, dynamic_axes=axes, **common)  # type: ignore[arg-type]
    return onnx.load_from_string(buffer.getvalue())


def _state_names(graph: nn.Module) -> list[str]:
    if not isinstance(graph, StatefulGraph):
        return []
    return [f"{layer}.{stat}" for layer in graph.ema_names for stat in ("mean", "var")]


def annotate(
    proto: onnx.ModelProto, graph: nn.Module, state: list[Tensor], mode: str, layers: int, lame: LameGraph | None
) -> None:
    """Name the batch axis, make the state inputs default to the initial state, record the convention."""
    import onnx

    for value in [*proto.graph.input[:1], *proto.graph.output[:1]]:
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.dim_param = "batch"
    for value, tensor in zip(proto.graph.input[1:], state):
        # An input that also has an initializer is optional: omitting it feeds the initial state.
        proto.graph.initializer.append(onnx.numpy_helper.from_array(tensor.numpy(), name=value.name))
    meta = {
        "tta.mode": mode,
        "tta.lame": "none" if lame is None else repr(lame),
        "tta.batchnorm_layers": str(layers),
        "tta.state_inputs": ",".join(value.name for value in proto.graph.input[1:]),
        "tta.calling_convention": (
            "feed 'input'; each output 'ema_out.X' is the next call's input 'ema_in.X'; "
            "omit the ema_in.* inputs to start from the exported statistics"
        ),
    }
    if isinstance(graph, StatefulGraph):
        meta["tta.ema_momentum"] = ",".join(str(m.ema_momentum) for m in graph.ema_layers())
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
