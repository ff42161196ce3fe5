"""Diagnostics behind the per-corruption analysis of docs/cotta_lame.md, each printed with a label.

All on Fashion-MNIST-C at severity 5 (corrupted on the fly by ``eval.datasets.CorruptedView``,
seed 0, batches of 128, the first test images) with the shipped source model
(``eval/assets/fmnist_resnet.pt``). Subcommands:

- ``snow``: the source model's accuracy and mean confidence on snow, and how often the 5 nearest
  neighbours of an image in LAME's feature space (the L2-normalized input of the head ``fc``; the
  image itself excluded) share its predicted and its true class: within each batch (the neighbours
  LAME uses) and over all the images pooled.
- ``lame-batch``: on one batch (the first Gaussian-noise batch), the accuracy of the source model and
  of LAME with the kNN affinity, the RBF affinity, and the RBF affinity with ``bound_lambda=0.1``; the
  row sums of both affinity matrices; the number of distinct predicted classes.
- ``cotta-anchor``: CoTTA's anchor confidence (the frozen source weights, BatchNorm on batch
  statistics; the mean max-probability compared with ``confidence_threshold``) per corruption.
- ``cotta-augment``: at the source weights, the accuracy of CoTTA's teacher on the batch itself
  against its 32-copy augmentation average (CoTTA's own augmentation and random draws).

Usage:
    python benchmarks/method_diagnostics.py snow
    python benchmarks/method_diagnostics.py lame-batch --corruption gaussian_noise
    python benchmarks/method_diagnostics.py cotta-anchor
    python benchmarks/method_diagnostics.py cotta-augment --corruptions gaussian_noise,impulse_noise
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.corruptions import DEFAULT_CORRUPTIONS
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.models.source import load_source_model
from tta.heads import split_classifier
from tta.methods.cotta import CoTTA
from tta.methods.lame import LAME, Affinity, affinity_matrix

SEVERITY = 5


def batches(corruption: str, limit: int, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the corrupted batches ``(x, y)`` of the first ``limit`` Fashion-MNIST test images."""
    images, labels = load_fashion_mnist("test")
    yield from CorruptedView(images, labels, corruption, SEVERITY, batch_size=batch_size, seed=seed, limit=limit)


def lame_features(model: nn.Module, x: Tensor) -> Tensor:
    """Return LAME's features of ``x``: the L2-normalized input of the model's head."""
    features, _ = split_classifier(model)
    return F.normalize(features(x).flatten(1).float(), p=2, dim=-1)


def neighbour_agreement(feats: Tensor, predicted: Tensor, labels: Tensor, k: int) -> dict[str, float]:
    """Return the fractions of (image, neighbour) pairs, over the ``k`` nearest others, that agree on a class.

    Neighbours are those of LAME's own kNN affinity. Keys: ``"prediction = prediction"`` (the
    neighbour's predicted class is the image's), ``"prediction = true"`` (the neighbour's predicted
    class is the image's true class), ``"true = true"`` (both have the same true class).
    """
    kernel = affinity_matrix(feats, "knn", knn=k)  # (N, N), W_ij = 1 iff j is among i's k nearest others
    pairs = kernel.sum().item()

    def agree(neighbour: Tensor, image: Tensor) -> float:
        return (kernel * (neighbour[None, :] == image[:, None])).sum().item() / pairs

    return {"prediction = prediction": agree(predicted, predicted), "prediction = true": agree(predicted, labels),
            "true = true": agree(labels, labels)}


@torch.no_grad()
def snow(args: argparse.Namespace) -> None:
    """Print the source model's accuracy, confidence and neighbour agreement on ``args.corruption``."""
    model = load_source_model()
    correct, confidence, total = 0.0, 0.0, 0
    within: dict[str, float] = {}
    all_feats, all_pred, all_labels = [], [], []
    for x, y in batches(args.corruption, args.limit, args.batch_size, args.seed):
        probs = model(x).softmax(-1)
        predicted = probs.argmax(-1)
        feats = lame_features(model, x)
        for key, value in neighbour_agreement(feats, predicted, y, args.knn).items():
            within[key] = within.get(key, 0.0) + value * len(y)
        correct += (predicted == y).sum().item()
        confidence += probs.max(-1).values.sum().item()
        total += len(y)
        all_feats.append(feats)
        all_pred.append(predicted)
        all_labels.append(y)
    pooled = neighbour_agreement(torch.cat(all_feats), torch.cat(all_pred), torch.cat(all_labels), args.knn)
    print(f"{args.corruption}-{SEVERITY}, source model, {total} images, batch {args.batch_size}, seed {args.seed}")
    print(f"source accuracy: {100 * correct / total:.1f} %")
    print(f"source mean confidence (max softmax): {confidence / total:.3f}")
    print(f"{args.knn} nearest neighbours (self excluded), neighbour's class = image's class:")
    for key, value in within.items():
        print(f"  within each batch, {key}: {100 * value / total:.1f} %")
    for key, value in pooled.items():
        print(f"  over all {total} images, {key}: {100 * value:.1f} %")


def _accuracy_and_classes(logits: Tensor, labels: Tensor) -> str:
    predicted = logits.argmax(-1)
    accuracy = 100 * (predicted == labels).float().mean().item()
    return f"{accuracy:.1f} % ({torch.unique(predicted).numel()} distinct predicted classes)"


@torch.no_grad()
def lame_batch(args: argparse.Namespace) -> None:
    """Print source and LAME accuracies and the affinity row sums on batch ``args.batch`` of a corruption."""
    images, labels = load_fashion_mnist("test")
    view = CorruptedView(images, labels, args.corruption, SEVERITY, batch_size=args.batch_size, seed=args.seed)
    x, y = view.batch(args.batch)
    model = load_source_model()
    feats = lame_features(model, x)
    print(f"{args.corruption}-{SEVERITY}, batch {args.batch} of size {len(y)}, seed {args.seed}")
    for kind in ("knn", "rbf"):
        rows = affinity_matrix(feats, kind, knn=args.knn).sum(-1)
        print(f"{kind} affinity (knn={args.knn}) row sums: min {rows.min():.1f}, max {rows.max():.1f}, "
              f"mean {rows.mean():.1f}")
    print(f"source accuracy: {_accuracy_and_classes(model(x), y)}")
    configs: list[tuple[Affinity, float]] = [("knn", 1.0), ("rbf", 1.0), ("rbf", 0.1)]
    for affinity, bound_lambda in configs:
        lame = LAME.from_model(model, affinity=affinity, bound_lambda=bound_lambda, knn=args.knn)
        print(f"lame ({affinity}, bound_lambda={bound_lambda}) accuracy: {_accuracy_and_classes(lame(x), y)}")


def _corruptions(text: str) -> list[str]:
    return list(DEFAULT_CORRUPTIONS) if text == "default" else text.split(",")


@torch.no_grad()
def cotta_anchor(args: argparse.Namespace) -> None:
    """Print CoTTA's anchor confidence per corruption, against its confidence threshold."""
    cotta = CoTTA.from_model(load_source_model())  # the defaults of tta.wrap(model, "cotta")
    threshold = cotta.confidence_threshold
    print(f"CoTTA anchor (source weights, BN on batch statistics), first {args.limit} images, "
          f"batch {args.batch_size}, seed {args.seed}, threshold {threshold}")
    print("| corruption | mean confidence | lowest batch | highest batch | batches >= threshold |\n|---|--:|--:|--:|--:|")
    means = []
    for corruption in _corruptions(args.corruptions):
        per_batch, weights = [], []
        for x, _ in batches(corruption, args.limit, args.batch_size, args.seed):
            per_batch.append(cotta.anchor(x).softmax(1).max(1).values.mean(0).item())  # CoTTA.teacher_target's test
            weights.append(len(x))
        mean = sum(c * w for c, w in zip(per_batch, weights)) / sum(weights)
        means.append(mean)
        confident = sum(c >= threshold for c in per_batch)
        print(f"| {corruption} | {mean:.3f} | {min(per_batch):.3f} | {max(per_batch):.3f} | "
              f"{confident} of {len(per_batch)} |")
    print(f"anchor mean confidence range over these corruptions: {min(means):.3f}-{max(means):.3f}")


@torch.no_grad()
def cotta_augment(args: argparse.Namespace) -> None:
    """Print the teacher's accuracy at the source weights, plain vs averaged over augmented copies."""
    cotta = CoTTA.from_model(load_source_model())  # the defaults of tta.wrap(model, "cotta")
    print(f"CoTTA teacher at the source weights (BN on batch statistics), {cotta.num_augmentations} copies, "
          f"first {args.limit} images, batch {args.batch_size}, seed {args.seed}")
    print("| corruption | plain accuracy (%) | augmentation average (%) | average - plain (points) |\n"
          "|---|--:|--:|--:|")
    for corruption in _corruptions(args.corruptions):
        plain, averaged, total = 0, 0, 0
        for step, (x, y) in enumerate(batches(corruption, args.limit, args.batch_size, args.seed)):
            cotta.step_count.fill_(step)  # the random draws CoTTA makes at this step of a run
            cpu_gen, device_gen = cotta.step_generators(x.device)
            plain += int((cotta.teacher(x).argmax(1) == y).sum())
            averaged += int((cotta.augmented_teacher_logits(x, cpu_gen, device_gen).argmax(1) == y).sum())
            total += len(y)
        p, a = 100 * plain / total, 100 * averaged / total
        print(f"| {corruption} | {p:.2f} | {a:.2f} | {a - p:+.2f} |")


def main() -> None:
    """Parse the subcommand and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    parser.add_argument("--batch-size", type=int, default=128)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("snow", help="source accuracy, confidence and neighbour agreement on one corruption")
    p.add_argument("--corruption", default="snow")
    p.add_argument("--limit", type=int, default=1024, help="first N test images")
    p.add_argument("--knn", type=int, default=5)
    p.set_defaults(run=snow)

    p = commands.add_parser("lame-batch", help="source vs LAME (kNN, RBF) on one batch, affinity row sums")
    p.add_argument("--corruption", default="gaussian_noise")
    p.add_argument("--batch", type=int, default=0, help="index of the batch")
    p.add_argument("--knn", type=int, default=5)
    p.set_defaults(run=lame_batch)

    p = commands.add_parser("cotta-anchor", help="CoTTA's anchor confidence per corruption")
    p.add_argument("--corruptions", default="default", help="'default' (the 15) or a comma-separated list")
    p.add_argument("--limit", type=int, default=2000)
    p.set_defaults(run=cotta_anchor)

    p = commands.add_parser("cotta-augment", help="teacher accuracy at the source weights, plain vs 32-copy average")
    p.add_argument("--corruptions", default="gaussian_noise,impulse_noise,motion_blur,glass_blur",
                   help="'default' (the 15) or a comma-separated list")
    p.add_argument("--limit", type=int, default=2000)
    p.set_defaults(run=cotta_augment)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
