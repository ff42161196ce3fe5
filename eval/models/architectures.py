"""Benchmark models from torchvision (or timm) architecture names plus a local weights file.

Nothing is downloaded: the architecture is built without weights and the user's file is loaded.
Input normalization goes inside the model (:func:`eval.models.source.with_normalization`), so every model
takes images in [0, 1]; the mean/std used are recorded in the :class:`ModelSpec`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from torch import nn

from eval.models.source import with_normalization
from eval.models.wide_resnet import wrn28_10
from tta.files import read_torch_file

__all__ = ["ModelSpec", "SHIPPED", "IMAGENET_MEAN", "IMAGENET_STD", "build_model", "load_weights", "file_digest"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: architecture name, weights file, classes and the input normalization inside it."""

    arch: str
    weights: Path
    num_classes: int = 1000
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    arch_kwargs: Mapping[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        """Return a string identifying the model in result records (architecture, weights digest, normalization)."""
        return f"{self.arch}:{self.weights.name}@{file_digest(self.weights)}:mean={list(self.mean)}:std={list(self.std)}"


def file_digest(path: Path) -> str:
    """Return the first 12 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _build_architecture(arch: str, num_classes: int, kwargs: Mapping[str, object]) -> nn.Module:
    model = _call_builder(arch, num_classes, kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"architecture {arch!r} built a {type(model).__name__}, expected a torch.nn.Module")
    return model


SHIPPED: dict[str, Callable[..., nn.Module]] = {"wrn28_10": wrn28_10}
"""Architectures shipped here, by ``--model`` name: ``wrn28_10`` is RobustBench's CIFAR ``Standard`` layout."""


def _import_factory(arch: str) -> Callable[..., object]:
    """Return the function ``module:function`` names; the current directory is searched first, like ``python -m``."""
    module, _, name = arch.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        builder = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"architecture {arch!r}: cannot find function {name!r} in module {module!r} "
                         f"(searched the current directory and PYTHONPATH): {error}") from error
    if not callable(builder):
        kind = type(builder).__name__  # a bad --model value: ValueError, which the CLI reports as one line
        raise ValueError(f"architecture {arch!r}: {name!r} is a {kind}, expected a function")  # noqa: TRY004
    return cast(Callable[..., object], builder)


def _call_factory(arch: str, num_classes: int, kwargs: Mapping[str, object]) -> object:
    """Call the user's factory with ``num_classes``; a factory that does not take it is one clear error."""
    builder = _import_factory(arch)
    try:
        inspect.signature(builder).bind(num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise ValueError(f"architecture {arch!r}: the factory must accept num_classes={num_classes} as a keyword "
                         f"argument, e.g. def {arch.partition(':')[2]}(num_classes=10): ... ({error})") from None
    except ValueError:  # no signature to inspect (some builtins): call it and let it raise
        pass
    return builder(num_classes=num_classes, **kwargs)


def _call_builder(arch: str, num_classes: int, kwargs: Mapping[str, object]) -> object:
    if arch in SHIPPED:
        return SHIPPED[arch](num_classes=num_classes, **kwargs)
    if ":" in arch:  # "package.module:function"
        return _call_factory(arch, num_classes, kwargs)
    if arch.startswith("timm/"):
        try:
            timm = importlib.import_module("timm")
        except ImportError as error:
            raise ImportError(f"{arch} needs timm: pip install timm") from error
        return timm.create_model(arch[5:], pretrained=False, num_classes=num_classes, **kwargs)
    import torchvision

    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as error:
        raise ValueError(f"unknown architecture {arch!r}: use a torchvision name (resnet50, vit_b_16, ...), "
                         f"{' or '.join(SHIPPED)}, 'timm/<name>', or 'module:function' ({error})") from error


def load_weights(model: nn.Module, weights: str | os.PathLike[str]) -> nn.Module:
    """Load a local state dict (plain, or under ``state_dict``/``model``, ``module.`` prefixes stripped).

    Raises:
        FileNotFoundError: the file is absent (the message says where it was expected).
        ValueError: the file does not fit the architecture (missing/unexpected keys are listed).
    """
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(
            f"weights file {path} not found. Nothing is downloaded: save the architecture's state_dict "
            f"(e.g. torchvision's released .pth file) at that path and pass it with --weights"
        )
    state = read_torch_file(path, what="weights file")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state_dict (a dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # same keys, other shapes (e.g. another number of classes)
        raise ValueError(f"{path} does not fit {type(model).__name__}: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not fit {type(model).__name__}: missing {result.missing_keys[:8]}, "
                         f"unexpected {result.unexpected_keys[:8]}")
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    """Return the spec's model with its weights loaded and normalization inside, in ``eval()`` mode."""
    model = load_weights(_build_architecture(spec.arch, spec.num_classes, spec.arch_kwargs), spec.weights)
    return with_normalization(model, spec.mean, spec.std).eval()
