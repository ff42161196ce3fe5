"""EdgeSession: run an exported graph with onnxruntime and carry its EMA statistics across calls.

This module needs numpy and onnxruntime only (no PyTorch), so it can be copied to an edge device
as a single file. It implements the calling convention of :mod:`tta.onnx.export`: the graph takes
``input`` (and, with EMA statistics, the ``ema_in.*`` state), and returns ``logits`` (and the
``ema_out.*`` state that the next call feeds back).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["EdgeSession"]

_INPUT, _STATE_IN, _STATE_OUT = "input", "ema_in.", "ema_out."
_EXTRA_HINT = "pip install '.[onnx]' in a checkout of this project  (or just onnxruntime on the device)"


class EdgeSession:
    """An onnxruntime session that holds the EMA statistics of an adaptive graph between calls.

    Graphs without state (frozen, or adaptive with a prior) work too; then ``reset`` does nothing.

    Args:
        model: Path of the ``.onnx`` file, or its bytes.
        providers: onnxruntime execution providers; default CPU.
        intra_op_threads: Threads per operator (0 lets onnxruntime decide).

    Example:
        >>> session = EdgeSession("edge.onnx")                   # doctest: +SKIP
        >>> logits = session(batch)       # (B, K); adapts the EMA statistics, if any  # doctest: +SKIP
        >>> session.reset()               # back to the statistics stored at export    # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
    ) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError(f"EdgeSession needs onnxruntime, which is not installed; {_EXTRA_HINT}") from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # state inputs with defaults are intended; do not warn about them
        options.intra_op_num_threads = intra_op_threads
        source = model if isinstance(model, bytes) else os.fspath(model)
        self.session = onnxruntime.InferenceSession(source, options, providers=list(providers))
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = outputs[0]
        self.state_outputs = tuple(name for name in outputs if name.startswith(_STATE_OUT))
        self.state_inputs = tuple(_STATE_IN + name[len(_STATE_OUT):] for name in self.state_outputs)
        self._state: dict[str, np.ndarray] | None = None

    @property
    def metadata(self) -> dict[str, str]:
        """The ``tta.*`` properties stored in the model (mode, state inputs, calling convention)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def state(self) -> dict[str, np.ndarray] | None:
        """The EMA statistics the next call starts from, by input name; ``None`` = the exported ones."""
        return None if self._state is None else {k: v.copy() for k, v in self._state.items()}

    def __call__(self, x: Any) -> np.ndarray:
        """Return the logits ``(B, K)`` for the batch ``x`` ``(B, C, H, W)``, updating the EMA state."""
        feeds = {_INPUT: np.ascontiguousarray(x, dtype=np.float32)}
        if self._state is not None:
            feeds.update(self._state)
        outputs = self.session.run([self.output_name, *self.state_outputs], feeds)
        if self.state_outputs:
            self._state = dict(zip(self.state_inputs, outputs[1:]))
        return outputs[0]

    def reset(self) -> None:
        """Return to the statistics stored at export (the graph's default state inputs)."""
        self._state = None
