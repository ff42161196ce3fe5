"""ImageNet-C folder layout: ``<root>/<corruption>/<severity>/<wnid>/<file>.JPEG``, streamed with workers.

Class indices are the sorted WordNet ids (the torchvision ImageNet order). Preprocessing is recorded
with every result: ``res256crop224`` (resize 256, center-crop 224: the RobustBench / Tent / CoTTA
evaluation) or ``none`` (the stored 224 x 224 images as they are).

:func:`check_folder_root` lists every problem of the selected images before any work: missing
folders, class folders that differ between domains, outnumber the model's classes, or (without a
``--classes`` list of the model's class names) number fewer than them, images whose
header does not parse (PIL ``Image.open``: every JPEG marker up to the start of the scan) or that are
cut short (a JPEG without its end-of-image marker ``FF D9`` in its last 1 KiB; other formats through
PIL's ``verify``), and, with ``--preprocess none``, images whose sizes differ. The pixel data is not
decoded up front (about 10x the cost: 0.26 ms per 224 px JPEG against 0.03 ms for these checks), so a
JPEG whose scan is damaged without being cut short still fails only when it is read, naming the file.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from eval.domains import Domain

__all__ = ["Preprocess", "ImageFolderDomain", "check_folder_root", "class_folders", "list_images",
           "preprocess_transform", "read_class_list"]

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


def _missing_folders(root: Path, domains: Sequence[Domain]) -> None:
    """Raise ``FileNotFoundError`` listing every domain folder that is missing or has no class folders."""
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


def check_folder_root(
    root: str | os.PathLike[str],
    domains: Sequence[Domain],
    *,
    per_class: int | None = None,
    subset_file: str | os.PathLike[str] | None = None,
    preprocess: Preprocess | None = None,
    num_classes: int | None = None,
    classes: str | os.PathLike[str] | None = None,
) -> None:
    """Check the folders and every selected image of ``domains`` before any work (see the module docstring).

    Args:
        root: The ImageNet-C root.
        domains: The domains that will be read.
        per_class, subset_file: The selection of :func:`list_images`; only selected images are checked.
        preprocess: With ``none`` the images are batched as stored, so they must share one size.
        num_classes: When known, the model's classes: more class folders would give labels it cannot predict,
            fewer would shift every label after a missing class unless ``classes`` lists them.
        classes: A text file of the model's class names (wnids), one a line in its class order: labels are
            indices in it, so the folders may hold any of its classes; every folder must be named in it.

    Raises:
        FileNotFoundError: Listing every missing or empty domain folder.
        ValueError: Listing every class-folder mismatch, unreadable or cut-short image and size mismatch.
    """
    root = Path(root)
    _missing_folders(root, domains)
    names = read_class_list(classes, num_classes) if classes is not None else None
    problems: list[str] = []
    reference: tuple[Domain, list[str]] | None = None
    items: list[Path] = []
    for domain in domains:
        folder = domain_dir(root, domain)
        found = class_folders(folder)
        problems += _class_count_problems(folder, found, num_classes, names, classes)
        if reference is None:
            reference = (domain, found)
        elif found != reference[1]:
            extra = sorted(set(found) ^ set(reference[1]))[:5]
            problems.append(f"{folder}: class folders differ from those of {domain_dir(root, reference[0])} "
                            f"(e.g. {', '.join(extra) or 'their order'}), so class indices would not match")
        items += [path for path, _ in list_images(folder, per_class=per_class,
                                                 subset_file=Path(subset_file) if subset_file else None)]
    problems += _image_problems(items, preprocess)
    if problems:
        raise ValueError(f"ImageNet-C layout under {root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def read_class_list(path: str | os.PathLike[str], num_classes: int | None = None) -> list[str]:
    """Return the class names of a ``--classes`` file (one wnid a line, the model's class order).

    Raises:
        OSError: If the file cannot be read.
        ValueError: If it is empty, repeats a name, or (``num_classes`` given) lists another number of classes.
    """
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise OSError(f"--classes {path}: cannot read the class list ({error})") from None
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)[:5]
    if not names or repeated:
        raise ValueError(f"--classes {path}: expected one class name (wnid) a line, each once; "
                         + (f"{', '.join(repeated)} repeated" if repeated else "the file is empty"))
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"--classes {path} lists {len(names)} class names but the model has {num_classes} "
                         "classes; list all of the model's classes in its output order")
    return names


def _class_count_problems(folder: Path, found: Sequence[str], num_classes: int | None, names: Sequence[str] | None,
                          classes: str | os.PathLike[str] | None) -> list[str]:
    """Return the problems of one domain's class folders against the model's classes or the class list."""
    if names is not None:
        unknown = [name for name in found if name not in set(names)]
        return [f"{folder}: class folder(s) {', '.join(unknown[:5])} not in --classes {classes}"] if unknown else []
    if num_classes is None or len(found) == num_classes:
        return []
    if len(found) > num_classes:
        return [f"{folder} has {len(found)} class folders but the model has {num_classes} classes"]
    return [(f"{folder} has {len(found)} class folders but the model has {num_classes} classes: labels are the sorted "
             "folder index, so a missing class shifts every later label; pass --classes FILE (the model's class "
             "names, one wnid a line in its output order) to evaluate a subset of classes")]


def _image_problems(paths: Sequence[Path], preprocess: Preprocess | None) -> list[str]:
    """Return one line naming every unreadable or cut-short image, and one for mismatched sizes."""
    broken, sizes = [], {}
    for path in paths:
        try:
            sizes[path] = _checked_size(path)
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as error:
            broken.append(f"{path} ({error})")
    problems = []
    if broken:
        problems.append(f"{len(broken)} image(s) cannot be read (truncated or not an image): " + ", ".join(broken))
    if preprocess == "none" and len(set(sizes.values())) > 1:
        problems.append(_size_problem(sizes))
    return problems


def _checked_size(path: Path) -> tuple[int, int]:
    """Return the image's (width, height) after checking its header and that it is not cut short."""
    with Image.open(path) as image:
        size, jpeg = image.size, image.format == "JPEG"
        if not jpeg:
            image.verify()
    if jpeg:
        with open(path, "rb") as handle:
            handle.seek(max(path.stat().st_size - 1024, 0))
            if b"\xff\xd9" not in handle.read():
                raise OSError("no JPEG end-of-image marker: the file is cut short")
    return size


def _size_problem(sizes: dict[Path, tuple[int, int]], shown: int = 20) -> str:
    (common, _), = Counter(sizes.values()).most_common(1)
    odd = [f"{path} ({w}x{h})" for path, (w, h) in sizes.items() if (w, h) != common]
    more = f" and {len(odd) - shown} more" if len(odd) > shown else ""
    return (f"--preprocess none batches the stored images as they are, so they must share one size; {len(odd)} of "
            f"{len(sizes)} differ from {common[0]}x{common[1]}: {', '.join(odd[:shown])}{more}; pass --preprocess "
            "res256crop224 (resize 256, centre-crop 224) to evaluate them")


def class_folders(folder: Path) -> list[str]:
    """Return the class folder names (WordNet ids) of a domain folder, sorted: class ``i`` is the ``i``-th."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def list_images(folder: Path, *, per_class: int | None = None, subset_file: Path | None = None,
                class_names: Sequence[str] | None = None) -> list[tuple[Path, int]]:
    """Return ``(path, class index)`` pairs in sorted order, optionally a subset.

    Args:
        folder: A domain folder of ``<wnid>/<image>`` files.
        per_class: Keep the first ``per_class`` images of each class (5 gives a 5,000-image subset).
        subset_file: A text file of ``<wnid>/<image>`` lines to keep (e.g. RobustBench's 5,000 ids);
            overrides ``per_class``.
        class_names: The model's classes in order (``--classes``): a folder's label is its index there
            rather than its sorted position (checked by :func:`check_folder_root`).
    """
    classes = class_folders(folder)
    index_of = {name: i for i, name in enumerate(class_names)} if class_names is not None else None
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
        items += [(f, index if index_of is None else index_of[wnid]) for f in files]
    return items


class ImageFolderDomain(Dataset[tuple[Tensor, Tensor]]):
    """One domain of an ImageNet-C style folder: items ``(x in [0,1] (3,H,W), y)``.

    Args:
        root: The ImageNet-C root (or a clean ``<wnid>/<image>`` folder for ``Domain("clean", 0)``).
        domain: Which corruption and severity.
        preprocess: ``res256crop224`` or ``none``.
        per_class: Keep only the first ``per_class`` images of each class (5 -> 5,000 images).
        subset_file: A list of ``<wnid>/<image>`` to keep instead.
        classes: A ``--classes`` file: labels are indices in it (see :func:`check_folder_root`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        domain: Domain,
        *,
        preprocess: Preprocess = "res256crop224",
        per_class: int | None = None,
        subset_file: str | os.PathLike[str] | None = None,
        classes: str | os.PathLike[str] | None = None,
    ) -> None:
        _missing_folders(Path(root), [domain])  # the images are checked by check_folder_root, once per run
        self.domain = domain
        self.transform = preprocess_transform(preprocess)
        self.items = list_images(domain_dir(Path(root), domain), per_class=per_class,
                                 subset_file=Path(subset_file) if subset_file else None,
                                 class_names=read_class_list(classes) if classes is not None else None)
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
