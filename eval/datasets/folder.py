"""ImageNet-C folder layout: ``<root>/<corruption>/<severity>/<wnid>/<file>.JPEG``, streamed with workers.

Class indices are the sorted WordNet ids (the torchvision ImageNet order). Preprocessing is recorded
with every result: ``res256crop224`` (resize 256, center-crop 224: the RobustBench / Tent / CoTTA
evaluation) or ``none`` (the stored 224 x 224 images as they are).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from eval.domains import Domain

__all__ = ["Preprocess", "ImageFolderDomain", "check_folder_root", "list_images", "preprocess_transform"]

Preprocess = Literal["res256crop224", "none"]
_EXTENSIONS = (".jpeg", ".jpg", ".png")


def preprocess_transform(preprocess: Preprocess) -> transforms.Compose:
    """Return the PIL -> float tensor in [0, 1] transform of a preprocessing name."""
    if preprocess == "res256crop224":
        return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    if preprocess == "none":
        return transforms.Compose([transforms.ToTensor()])
    raise ValueError(f"unknown preprocessing {preprocess!r}; choose 'res256crop224' or 'none'")


def domain_dir(root: Path, domain: Domain) -> Path:
    """Return the folder of one domain (``<root>/<corruption>/<severity>``; ``<root>`` itself for clean)."""
    return root if domain.corruption == "clean" else root / domain.corruption / str(domain.severity)


def check_folder_root(root: str | os.PathLike[str], domains: Sequence[Domain]) -> None:
    """Raise ``FileNotFoundError`` listing every domain folder that is missing or has no class folders."""
    root = Path(root)
    problems = []
    for domain in domains:
        folder = domain_dir(root, domain)
        if not folder.is_dir():
            problems.append(f"{folder} (missing)")
        elif not any(p.is_dir() for p in folder.iterdir()):
            problems.append(f"{folder} (no class folders)")
    if problems:
        raise FileNotFoundError(
            f"ImageNet-C layout <root>/<corruption>/<severity>/<wnid>/<image> under {root} is incomplete; "
            f"{len(problems)} folder(s): " + ", ".join(problems)
        )


def list_images(folder: Path, *, per_class: int | None = None, subset_file: Path | None = None) -> list[tuple[Path, int]]:
    """Return ``(path, class index)`` pairs in sorted order, optionally a subset.

    Args:
        folder: A domain folder of ``<wnid>/<image>`` files.
        per_class: Keep the first ``per_class`` images of each class (5 gives a 5,000-image subset).
        subset_file: A text file of ``<wnid>/<image>`` lines to keep (e.g. RobustBench's 5,000 ids);
            overrides ``per_class``.
    """
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    wanted = None
    if subset_file is not None:
        wanted = {line.strip() for line in Path(subset_file).read_text().splitlines() if line.strip()}
    items = []
    for index, wnid in enumerate(classes):
        files = sorted(p for p in (folder / wnid).iterdir() if p.suffix.lower() in _EXTENSIONS)
        if wanted is not None:
            files = [f for f in files if f"{wnid}/{f.name}" in wanted]
        elif per_class is not None:
            files = files[:per_class]
        items += [(f, index) for f in files]
    return items


class ImageFolderDomain(Dataset[tuple[Tensor, Tensor]]):
    """One domain of an ImageNet-C style folder: items ``(x in [0,1] (3,H,W), y)``.

    Args:
        root: The ImageNet-C root (or a clean ``<wnid>/<image>`` folder for ``Domain("clean", 0)``).
        domain: Which corruption and severity.
        preprocess: ``res256crop224`` or ``none``.
        per_class: Keep only the first ``per_class`` images of each class (5 -> 5,000 images).
        subset_file: A list of ``<wnid>/<image>`` to keep instead.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        domain: Domain,
        *,
        preprocess: Preprocess = "res256crop224",
        per_class: int | None = None,
        subset_file: str | os.PathLike[str] | None = None,
    ) -> None:
        check_folder_root(root, [domain])
        self.domain = domain
        self.transform = preprocess_transform(preprocess)
        self.items = list_images(domain_dir(Path(root), domain), per_class=per_class,
                                 subset_file=Path(subset_file) if subset_file else None)
        if not self.items:
            raise FileNotFoundError(f"no images found for {domain} under {domain_dir(Path(root), domain)}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path, label = self.items[index]
        try:
            with Image.open(path) as image:
                x = self.transform(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"cannot decode {path} (truncated or not an image): {error}") from error
        return x, torch.tensor(label)
