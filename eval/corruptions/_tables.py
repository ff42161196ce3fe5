"""Severity tables with an ImageNet-C and a CIFAR-10-C variant, and the rule choosing between them.

The reference scripts of hendrycks/robustness define every corruption twice: for 224-pixel
ImageNet images (``ImageNet-C/create_c/make_imagenet_c.py``) and for 32-pixel CIFAR images
(``ImageNet-C/create_c/make_cifar_c.py``), with milder constants for the small images. Here
``table="auto"`` picks the CIFAR-10-C table when the shorter image side is at most
:data:`CIFAR_MAX_SIDE` pixels (CIFAR's 32, Fashion-MNIST's 28, Tiny-ImageNet's 64) and the
ImageNet-C table otherwise; ``table="imagenet"`` or ``"cifar"`` forces one. Constants that are
lengths in pixels (blur radii stay as the reference has them; elastic displacements, texture
scales and the fractal map size) are scaled with the image as documented by each corruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from torch import Tensor

__all__ = ["CIFAR_MAX_SIDE", "TABLES", "ResolvedTable", "SeverityTable", "TableName", "resolve_table"]

T = TypeVar("T")

#: Images whose shorter side is at most this many pixels use the CIFAR-10-C tables under ``"auto"``.
CIFAR_MAX_SIDE = 64
TableName = Literal["auto", "imagenet", "cifar"]
ResolvedTable = Literal["imagenet", "cifar"]
TABLES: tuple[str, ...] = ("auto", "imagenet", "cifar")


@dataclass(frozen=True)
class SeverityTable(Generic[T]):
    """The five constants of one corruption for ImageNet-C and for CIFAR-10-C.

    Example:
        >>> table = SeverityTable(imagenet=(1, 2, 3, 4, 5), cifar=(6, 7, 8, 9, 10))
        >>> table.get("cifar", 2)
        7
    """

    imagenet: tuple[T, ...]
    cifar: tuple[T, ...]

    def get(self, table: ResolvedTable, severity: int) -> T:
        """Return the constant of ``severity`` (1..5) in the ``table`` variant."""
        return (self.imagenet if table == "imagenet" else self.cifar)[severity - 1]


def resolve_table(x: Tensor, table: object, name: str = "corruption") -> ResolvedTable:
    """Return ``"imagenet"`` or ``"cifar"`` for ``table`` (``"auto"`` decides by the image size).

    Raises:
        ValueError: ``table`` is not one of ``"auto"``, ``"imagenet"``, ``"cifar"``.
    """
    if table == "auto":
        return "cifar" if min(x.shape[-2:]) <= CIFAR_MAX_SIDE else "imagenet"
    if table in ("imagenet", "cifar"):
        return table
    raise ValueError(f"{name}: table must be one of {list(TABLES)}, got {table!r}")
