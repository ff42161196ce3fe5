"""Split a classifier into a feature extractor and its classification head.

LAME needs the penultimate features of a deployed model and DANN attaches a domain discriminator
to them. Both use :func:`split_classifier`, which finds the head by convention, never by a table
of architectures:

1. timm's interface: ``forward_features`` + ``forward_head(x, pre_logits=True)`` + ``get_classifier()``;
2. torchvision's head attributes, in this order: ``fc`` (ResNet), ``classifier`` (MobileNet,
   EfficientNet, ...), ``heads`` (VisionTransformer), ``head``;
3. an ``nn.Sequential`` whose last child is a ``Linear`` (that child), or whose last child holds
   the head by these rules (e.g. a model wrapped as ``Sequential(normalize, model)`` -> ``model.fc``);
4. otherwise the caller names the head module: ``split_classifier(model, head="model.fc")``.

The returned modules share their parameters with ``model`` (nothing is copied), and
``head(features(x))`` equals ``model(x)``.
"""

from __future__ import annotations

from typing import Protocol, cast

from torch import Tensor, nn

__all__ = ["HEAD_ATTRIBUTES", "split_classifier"]

HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
"""Attribute names that hold the classification head in torchvision (and most hand-written) models."""


class _TimmModel(Protocol):
    """The part of timm's model interface used here (checked at run time by ``_is_timm_style``)."""

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor: ...

    def get_classifier(self) -> nn.Module: ...


class _TimmFeatures(nn.Module):
    """Pre-logit features of a timm-style model: ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """Return the pooled pre-logit features, shape ``(B, D)``."""
        model = cast(_TimmModel, self.model)
        return model.forward_head(model.forward_features(x), pre_logits=True)


class _HeadInput(nn.Module):
    """The input the model passes to its head, captured by a forward pre-hook during a normal forward.

    The model's own ``forward`` runs unchanged (so any pooling, flattening or token selection
    before the head is the model's), and the head is evaluated once on the way; its output is
    discarded.
    """

    def __init__(self, model: nn.Module, head: nn.Module, head_name: str) -> None:
        super().__init__()
        self.model = model
        self.head_name = head_name
        # A plain tuple keeps the head out of this module's children: it already belongs to `model`.
        self._head = (head,)

    def forward(self, x: Tensor) -> Tensor:
        """Return the head's input for the batch ``x``, shape ``(B, D)``."""
        captured: list[Tensor] = []

        def capture(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured.append(inputs[0])

        handle = self._head[0].register_forward_pre_hook(capture)
        try:
            self.model(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(
                f"the head {self.head_name!r} was called {len(captured)} times in one forward of "
                f"{type(self.model).__name__}; pass head= naming the module that maps features to logits once"
            )
        return captured[0]

    def extra_repr(self) -> str:
        """Return the head's name for ``repr``."""
        return f"head={self.head_name!r}"


def _is_timm_style(model: nn.Module) -> bool:
    return all(callable(getattr(model, name, None)) for name in ("forward_features", "forward_head", "get_classifier"))


def _named_head(model: nn.Module, head: str) -> nn.Module:
    try:
        module = model.get_submodule(head)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name][-5:]
        raise ValueError(
            f"{type(model).__name__} has no submodule {head!r} to use as head=; its last modules are {names}"
        ) from None
    if module is model:
        raise ValueError("head= must name a submodule of the model, not the model itself")
    return module


def _not_found_message(model: nn.Module) -> str:
    names = [name for name, _ in model.named_modules() if name][-5:]
    return (
        f"cannot find the classification head of {type(model).__name__}: it has no timm-style "
        f"forward_features/forward_head/get_classifier and none of the attributes {list(HEAD_ATTRIBUTES)}. "
        f"Pass head='<module name>', the module that maps pooled features to logits "
        f"(its last modules are {names})."
    )


def split_classifier(model: nn.Module, head: str | None = None) -> tuple[nn.Module, nn.Module]:
    """Return ``(features, head)`` modules such that ``head(features(x))`` equals ``model(x)``.

    Args:
        model: A classifier; it is not copied or modified, and both returned modules share its
            parameters.
        head: Dotted name of the submodule that maps features to logits (for example
            ``"model.fc"`` for a model wrapped in a normalizing ``nn.Sequential``). ``None`` finds
            the head by convention (timm interface, the attributes in :data:`HEAD_ATTRIBUTES`, then a
            Sequential's last child).

    Returns:
        ``features``: maps a batch to the head's input, shape ``(B, D)``; ``head``: the model's own
        head module. With a named or attribute head, ``features`` runs the model's ``forward`` and
        captures the head's input.

    Raises:
        ValueError: If the head cannot be found; the message names the ``head=`` option.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> features, fc = split_classifier(net, head="1")
        >>> features(torch.ones(2, 2, 2)).shape, fc is net[1]
        (torch.Size([2, 4]), True)
    """
    if head is not None:
        module = _named_head(model, head)
        return _HeadInput(model, module, head), module
    if _is_timm_style(model):
        return _TimmFeatures(model), cast(_TimmModel, model).get_classifier()
    name = _conventional_head(model)
    if name is None:
        raise ValueError(_not_found_message(model))
    module = model.get_submodule(name)
    return _HeadInput(model, module, name), module


def _conventional_head(model: nn.Module, prefix: str = "") -> str | None:
    """Return the dotted name of the head by the attribute and Sequential conventions, or ``None``."""
    for name in HEAD_ATTRIBUTES:
        if isinstance(getattr(model, name, None), nn.Module):
            return prefix + name
    if isinstance(model, nn.Sequential) and len(model) > 0:
        last_name, last = list(model.named_children())[-1]
        if isinstance(last, nn.Linear):
            return prefix + last_name
        return _conventional_head(last, f"{prefix}{last_name}.")
    return None
