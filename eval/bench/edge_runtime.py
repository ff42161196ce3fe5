"""Score exported ONNX graphs in the benchmark: an onnxruntime session behind the adapter interface.

``tta bench --runtime onnx`` exports each method's adapter and runs the graph with onnxruntime, so
the table shows the accuracy an edge device gets. Each method's declarations decide
(:func:`runtime_mode`): a method that changes nothing and exports ``frozen`` (``source``) is exported
``frozen``; one that exports ``adaptive`` (``norm``) is exported ``adaptive``, with its EMA statistics
carried by the session. Other methods are refused: gradient-based ones (Tent, CoTTA) cannot adapt
inside an inference graph, and output corrections (LAME) are appended explicitly with
``tta export --lame-head``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

import tta
from tta.base import TTAMethod
from tta.onnx.edge import EdgeSession
from tta.onnx.export import ExportMode, require_onnx
from tta.guard import CollapseGuard
from tta.registry import get_adapter_class

__all__ = ["Runtime", "RUNTIMES", "OnnxRuntimeAdapter", "check_runtime_methods", "export_for_runtime", "runtime_mode"]

Runtime = Literal["torch", "onnx"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx")


class OnnxRuntimeAdapter(nn.Module):
    """A callable module that runs an exported graph with onnxruntime; ``reset`` restores its EMA state.

    Args:
        session: The session holding the graph and its EMA statistics.

    Shape:
        Input ``(B, C, H, W)`` float tensor; output logits ``(B, K)`` on the input's device.
    """

    def __init__(self, session: EdgeSession) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: Tensor) -> Tensor:
        """Return the graph's logits for ``x`` (and let the graph adapt its statistics)."""
        logits = self.session(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(logits).to(x.device)

    def reset(self) -> None:
        """Return the graph's EMA statistics to the exported ones."""
        self.session.reset()


def runtime_mode(method: type[TTAMethod]) -> ExportMode | None:
    """The export whose graph behaves as ``method`` does on a whole stream, from its declarations.

    ``adaptive`` for a method that adapts inside the graph; ``frozen`` for one that changes nothing (its
    graph is the method at every batch); ``None`` otherwise (a frozen snapshot would stop adapting).
    """
    if method.exports == "adaptive":
        return "adaptive"
    if method.exports == "frozen" and method.changes == "nothing":
        return "frozen"
    return None


def check_runtime_methods(methods: Sequence[str]) -> None:
    """Raise ``ValueError`` for methods that cannot run as an exported graph (:func:`runtime_mode` is ``None``).

    Raises:
        ImportError: If onnx, onnxscript or onnxruntime is missing (the message names the extra).
    """
    require_onnx("onnx", "onnxscript", "onnxruntime")
    refused = [m for m in methods if runtime_mode(get_adapter_class(m)) is None]
    if refused:
        scored = [f"{m} ({mode} graph)" for m in tta.list_methods() if (mode := runtime_mode(get_adapter_class(m)))]
        raise ValueError(
            f"--runtime onnx scores {', '.join(scored)}; method(s) {refused} cannot adapt inside an ONNX graph "
            "this way (gradient-based methods need a backward pass). Export an adapted snapshot with "
            "`tta export --mode frozen` instead"
        )


def export_for_runtime(
    adapter: tta.TTAMethod | CollapseGuard, example: Tensor, *, threads: int = 0
) -> OnnxRuntimeAdapter:
    """Export ``adapter`` in memory (as :func:`runtime_mode` says) and open it with onnxruntime.

    Args:
        adapter: A freshly built adapter, e.g. ``tta.wrap(model, "norm", prior=0.2)`` (guarded or not).
        example: A batch for tracing and for the parity check of the export.
        threads: onnxruntime intra-op threads (0 lets it decide).

    Raises:
        ValueError: If the method adapts by gradients and cannot run adaptively in a graph.
    """
    method = adapter.adapter if isinstance(adapter, CollapseGuard) else adapter
    # a method with no runtime mode is exported adaptive, and export_onnx says why it cannot be
    mode: ExportMode = runtime_mode(type(method)) or "adaptive"
    buffer = io.BytesIO()
    tta.export_onnx(adapter, buffer, example.cpu(), mode=mode)
    return OnnxRuntimeAdapter(EdgeSession(buffer.getvalue(), intra_op_threads=threads))
