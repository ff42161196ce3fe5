"""ONNX export: the adapted snapshot (``frozen``) or forward-only adaptation inside the graph (``adaptive``).

``frozen`` folds the current normalization statistics and affine parameters (after Tent, norm, ...)
into an ordinary inference graph. ``adaptive`` replaces every BatchNorm by explicit reductions
that compute the test-batch statistics in the graph, mixed with the source statistics by a prior
(alpha-BN), or updated as EMA statistics carried across calls as extra graph inputs and outputs.
Every export is verified: the written file runs in onnxruntime on the example batch and is compared
with PyTorch.

Exporter: by default the ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``); the
TorchScript-based one is available as ``exporter="torchscript"``. Both give onnxruntime parity within
1e-6 on the models we test (fmnist ResNet, resnet18, mobilenet_v3_small), and the TorchScript one
runs 3-10x faster, but PyTorch deprecated it and plans its removal, and it cannot export
torchvision's ViT (fused ``_native_multi_head_attention`` in inference). Both exporters turn a
BatchNorm in training mode that holds running statistics into an inference BatchNorm (the dynamo
exporter with at most a generic "training mode" warning), so batch statistics go through an explicit
module (``tta.onnx.layers``), never through ``train()``.
Running the exporters and writing the metadata below into the file is ``tta.onnx.trace``'s part.

Calling convention (adaptive graphs with EMA statistics), also stored in the model's metadata:

- inputs: ``input`` ``(batch, C, H, W)``, then for each EMA layer ``<name>`` in ``named_modules``
  order ``ema_in.<name>.mean`` and ``ema_in.<name>.var`` (shape ``(C_layer,)``, float32);
- outputs: ``logits`` ``(batch, K)``, then ``ema_out.<name>.mean`` and ``ema_out.<name>.var``;
- feed each ``ema_out.*`` back as the matching ``ema_in.*`` on the next call. The state inputs
  default to the statistics at export time (initializers), so the first call after a reset omits
  them. :class:`tta.onnx.edge.EdgeSession` does exactly this.
"""

from __future__ import annotations
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from torch import Tensor, nn

from adapters_bn import AdaptiveBatchNorm, fold_batchnorm, is_batchnorm
from tta.onnx.lame import LameGraph, LameOutput
from tta.onnx.layers import BatchStatisticsNorm, NormConfig, StatefulGraph, to_batch_statistics
from tta.onnx.trace import INPUT_NAME, Exporter, annotate, trace
from tta.base import Exports, TTAMethod
from tta.guard import CollapseGuard
from tta.registry import get_adapter_class, list_methods

__all__ = ["ExportMode", "OnnxExport", "OnnxMismatchError", "export_onnx", "EXTRA_HINT"]

logger = logging.getLogger(__name__)

ExportMode = Literal["frozen", "adaptive"]
EXTRA_HINT = "pip install '.[onnx]' in a checkout of this project  (installs onnx, onnxruntime and onnxscript)"


class OnnxMismatchError(RuntimeError):
    """The exported graph, run by onnxruntime, does not reproduce the PyTorch outputs."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Args:
        mode: ``frozen`` or ``adaptive``.
        input_names: Graph inputs: ``input``, then the EMA state inputs.
        output_names: Graph outputs: ``logits``, then the EMA state outputs, in the same order.
        batchnorm_layers: BatchNorm layers that compute statistics in the graph (0 in ``frozen``).
        max_abs_diff: Largest absolute difference between onnxruntime and PyTorch on the example
            (over all outputs), or ``None`` when not checked.
    """

    mode: ExportMode
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batchnorm_layers: int
    max_abs_diff: float | None

    @property
    def state_names(self) -> tuple[str, ...]:
        """The EMA state inputs (empty unless EMA statistics are exported)."""
        return self.input_names[1:]


def require_onnx(*modules: str) -> None:
    """Import the named optional packages, raising ``ImportError`` that names the extra when one is missing."""
    for name in modules:
        try:
            __import__(name)
        except ImportError as error:
            message = f"ONNX export needs the package {name!r}, which is not installed; {EXTRA_HINT}"
            raise ImportError(message) from error


def export_onnx(
    model: nn.Module,
    f: str | os.PathLike[str] | BinaryIO,
    example: Tensor,
    *,
    mode: ExportMode = "frozen",
    prior: float | None = None,
    ema_momentum: float | None = None,
    lame: LameGraph | None = None,
    opset: int = 18,
    exporter: Exporter = "dynamo",
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
) -> OnnxExport:
    """Export ``model`` (a plain model or a ``tta`` adapter) to ONNX and verify the file with onnxruntime.

    Args:
        model: A classifier, or an adapter from :func:`tta.wrap`: its prediction path (``.model``, or
            what its ``predict`` uses, e.g. CoTTA's teacher) is exported in its current state; a guarded
            adapter (``production=True``) exports its method's. Neither is modified.
        f: Destination file path or writable binary file object.
        example: An input batch ``(B, C, H, W)``; it fixes every axis but the batch axis.
        mode: ``frozen``: current statistics and affine parameters folded into an inference graph.
            ``adaptive``: each BatchNorm normalizes with the test batch's statistics inside the graph.
        prior: ``adaptive`` only: weight of the source statistics (alpha-BN), in [0, 1]; 0 = pure
            batch statistics. ``None`` keeps each adaptive layer's own mode (prior 0 for plain BN).
        ema_momentum: ``adaptive`` only: carry EMA statistics across calls as graph inputs and outputs
            (see the module docstring); the momentum in [0, 1] of the update.
        lame: Append LAME output correction (kNN affinity on the head's input features, a fixed
            number of steps); ``logits`` are then LAME's log-probabilities. Either mode. For adapters
            that predict through another module, the head is named from the adapter, e.g.
            ``adapter.teacher.fc``.
        opset: ONNX opset version.
        exporter: ``dynamo`` (``torch.export``-based, the default) or ``torchscript`` (deprecated by
            PyTorch, but 3.7-24x faster to export, docs/onnx.md; the same graphs for the models we test).
        dynamic_batch: Make the batch axis dynamic (otherwise it is fixed to ``example``'s).
        check: Run the written graph in onnxruntime on ``example`` and compare with PyTorch.
        atol: Largest absolute difference the check accepts.

    Returns:
        The names of the graph inputs and outputs and the measured difference.

    Raises:
        ImportError: onnx, onnxscript or (with ``check``) onnxruntime is missing; names the extra.
        ValueError: a bad mode or option, an adapter that declares ``exports="none"`` (LAME, DDA),
            one whose adaptation is not forward-only in ``adaptive`` mode (``exports="frozen"``: Tent,
            CoTTA; use ``frozen``), or a destination that cannot be written.
        OnnxMismatchError: onnxruntime's outputs differ from PyTorch's by more than ``atol``.

    Note:
        Models without BatchNorm (LayerNorm/GroupNorm only, e.g. a ViT) have no statistics to
        adapt: their ``adaptive`` graph equals the ``frozen`` one, and a warning is logged.
    """
    require_onnx("onnx", "onnxscript", *(("onnxruntime",) if check else ()))
    if isinstance(model, CollapseGuard):  # the guard's source copy and policy are not part of the prediction
        model = model.adapter
    _check_options(model, example, mode, exporter, prior, ema_momentum)
    path = _check_destination(f)
    example = example.detach().to("cpu", torch.float32)
    graph, state = _prepare(model, mode, prior, ema_momentum, lame)
    proto, input_names, output_names = trace(graph, example, state, opset, dynamic_batch, exporter)
    layers = sum(1 for m in graph.modules() if isinstance(m, BatchStatisticsNorm))
    annotate(proto, graph, state, mode, layers, lame)
    data = proto.SerializeToString()
    _write(f, path, data)
    diff = _verify(path or data, graph, example, state, input_names, atol) if check else None
    return OnnxExport(mode, input_names, output_names, layers, diff)


def _check_options(
    model: nn.Module, example: Tensor, mode: str, exporter: str, prior: float | None, ema_momentum: float | None
) -> None:
    if mode not in ("frozen", "adaptive"):
        raise ValueError(f"mode must be 'frozen' or 'adaptive', got {mode!r}")
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or not example.is_floating_point() or example.dim() < 2:
        raise TypeError("example must be a floating-point input batch tensor (B, C, ...)")
    if mode == "frozen" and (prior is not None or ema_momentum is not None):
        raise ValueError("prior and ema_momentum apply to mode='adaptive' only; a frozen graph has fixed statistics")
    if prior is not None and ema_momentum is not None:
        raise ValueError("give either prior (alpha-BN mixing) or ema_momentum (EMA statistics), not both")
    for name, value in (("prior", prior), ("ema_momentum", ema_momentum)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if isinstance(model, TTAMethod):
        _check_adapter(model, mode)


def _check_adapter(adapter: TTAMethod, mode: str) -> None:
    """Refuse adapters whose adaptation the chosen graph would silently drop, as their ``exports`` declares."""
    name = type(adapter).__name__
    if adapter.exports == "none":
        raise ValueError(
            "export_onnx exports the state of the methods that declare it exportable "
            f"({', '.join(_declaring('frozen', 'adaptive'))}); {name} changes its outputs in a way it cannot "
            "infer. Export adapter.model instead, and for LAME append the correction with "
            "lame=LameGraph(head=..., knn=...)"
        )
    # a method that changes nothing is the plain model: adaptive mode adapts it in the graph, as for any model
    if mode == "adaptive" and adapter.exports == "frozen" and adapter.changes != "nothing":
        how = f"its state (changes={adapter.changes!r})"
        if adapter.uses_grad:
            how = "by gradient steps (a backward pass)"
        raise ValueError(
            f"{name} adapts {how}, which an inference graph cannot express forward-only, so mode='adaptive' "
            "cannot export it; export its adapted state with mode='frozen', or use a method that adapts inside "
            f"the graph ({', '.join(_declaring('adaptive'))})"
        )


def _declaring(*exports: Exports) -> list[str]:
    """The registered methods whose ``exports`` is one of ``exports``, quoted for a message."""
    return [repr(m) for m in list_methods() if get_adapter_class(m).exports in exports]


def _check_destination(f: str | os.PathLike[str] | BinaryIO) -> Path | None:
    """Return the destination path (``None`` for a file object), raising ``ValueError`` if it cannot be written."""
    if hasattr(f, "write"):
        return None
    if not isinstance(f, (str, os.PathLike)):
        raise TypeError(f"f must be a path or a writable binary file object, got {type(f).__name__}")
    path = Path(f)
    folder = path.parent
    if path.is_dir():
        raise ValueError(
            f"cannot write the ONNX file to {path}: it is a folder; give a file name such as {path / 'model.onnx'}"
        )
    if not folder.is_dir():
        raise ValueError(f"cannot write the ONNX file to {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write the ONNX file to {path}: permission denied")
    return path


def _prepare(
    model: nn.Module, mode: str, prior: float | None, ema_momentum: float | None, lame: LameGraph | None
) -> tuple[nn.Module, list[Tensor]]:
    """Return the module to trace (a copy) and the EMA state it takes (empty without EMA)."""
    inner = _predictor(model) if isinstance(model, TTAMethod) else model
    graph = copy.deepcopy(inner).cpu().eval()  # traced and checked on CPU, whatever device the model is on
    if mode == "frozen":
        graph = fold_batchnorm(graph).eval()
        return (graph if lame is None else LameOutput(graph, lame).eval()), []
    if not any(is_batchnorm(m) or isinstance(m, AdaptiveBatchNorm) for m in graph.modules()):
        logger.warning(
            "%s has no BatchNorm layer with statistics (LayerNorm/GroupNorm only): adaptive mode has no "
            "statistics to adapt, and the graph equals the frozen export", type(inner).__name__,
        )
    config = None
    if prior is not None or ema_momentum is not None:
        config = NormConfig(prior=prior or 0.0, ema_momentum=ema_momentum)
    graph = to_batch_statistics(graph, config).eval()
    if lame is not None:
        graph = LameOutput(graph, lame).eval()
    stateful = StatefulGraph(graph).eval()
    if not stateful.ema_names:
        return graph, []
    return stateful, stateful.initial_state()


class _Predict(nn.Module):
    """An adapter's prediction path as a module, for methods that predict with another model (CoTTA's teacher)."""

    def __init__(self, adapter: TTAMethod) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter.predict(x)


def _predictor(adapter: TTAMethod) -> nn.Module:
    """Return the module whose forward gives the adapter's current predictions."""
    if type(adapter).predict is TTAMethod.predict:
        return adapter.model
    return _Predict(adapter)


def _write(f: str | os.PathLike[str] | BinaryIO, path: Path | None, data: bytes) -> None:
    if path is None:
        f.write(data)  # type: ignore[union-attr]
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _verify(
    model: Path | bytes, graph: nn.Module, example: Tensor, state: list[Tensor], input_names: tuple[str, ...],
    atol: float,
) -> float:
    """Run the written graph in onnxruntime on ``example``; raise if it differs from PyTorch by more than ``atol``."""
    import onnxruntime

    source = str(model) if isinstance(model, Path) else model
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # state inputs with defaults are intended; do not warn about them
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    feeds = {INPUT_NAME: example.detach().cpu().numpy()}
    feeds.update({name: t.cpu().numpy() for name, t in zip(input_names[1:], state)})
    actual = session.run(None, feeds)
    with torch.no_grad():
        expected = graph(example, state) if state else (graph(example),)
    diff = max(float(np.abs(a - e.cpu().numpy()).max()) for a, e in zip(actual, expected))
    if not diff <= atol:
        where = f" (written to {model})" if isinstance(model, Path) else ""
        raise OnnxMismatchError(
            f"onnxruntime output differs from PyTorch by up to {diff:.3g} (tolerance {atol:g}) on the example "
            f"batch of shape {tuple(example.shape)}{where}; the graph does not reproduce the model"
        )
    return diff
