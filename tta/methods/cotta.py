"""CoTTA: continual test-time adaptation with a mean teacher, augmentation averaging and stochastic restore.

Each batch: the student (all weights and biases trainable, BatchNorm on test-batch statistics)
is trained for one step to match the soft predictions of a teacher, the exponential moving
average of the student. When the source model (the frozen *anchor*) is unsure of the batch (mean
max-probability below ``confidence_threshold``), the teacher's target is its logits averaged over
32 augmented copies of the batch; otherwise its logits on the batch itself. After the step the
teacher moves towards the student, and every element of every updated weight is put back to its
source value with probability ``restore_prob``. The returned logits are the teacher's target for
the batch, computed before the update (as in the official code).

Reference: Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022 (arXiv:2203.13591).
Adapted from: qinenergy/cotta ``cifar/cotta.py``, ``imagenet/cotta.py``, ``cifar/my_transforms.py``,
``cifar/cfgs/cifar10/cotta.yaml``, ``imagenet/cfgs/10orders/cotta/*.yaml``, ``imagenet/conf.py`` (MIT).

Presets (``CoTTA.from_model(model, preset=...)``), each value from the official code:

========================  ==========================  ================================
setting                   ``cifar10``                 ``imagenet``
========================  ==========================  ================================
optimizer                 Adam lr 1e-3, betas         SGD lr 0.01, momentum 0.9,
                          (0.9, 0.999), wd 0          Nesterov, dampening 0, wd 0
EMA momentum (alpha)      0.999 (``OPTIM.MT``)        0.999 (hard-coded)
restore prob. (p)         0.01 (``OPTIM.RST``)        0.001 (hard-coded)
threshold (p_th)          0.92 (``OPTIM.AP``)         0.1 (hard-coded)
loss                      soft cross-entropy          symmetric soft cross-entropy
========================  ==========================  ================================

Differences from the reference implementation:
- BatchNorm layers use test-batch statistics through ``adapters_bn.adapt_batchnorm(stats="batch")``
  and the model stays in ``eval()``; the official code calls ``model.train()`` and deletes the
  running statistics (same normalization; dropout stays off here, and the source statistics are
  kept for ``reset``). The teacher and anchor normalize with batch statistics too, as the official
  copies of the configured model do.
- The 32 augmented copies go through the teacher in as few forwards as ``max_images`` allows
  (by default: all at once on accelerators, one copy per forward on CPU, where larger batches
  measured no faster), instead of 32 separate forwards. Where BatchNorm uses batch statistics, a
  chunk of copies runs under ``torch.func.vmap``, so each copy is still normalized by its own
  statistics, as in the official separate forwards. Where vmap has no rule for a kernel (cuDNN
  convolutions on channels_last tensors raise "NYI ... inside of vmap"), the copies go through
  separate forwards from then on.
- The CIFAR code computes the augmented forwards on every batch and discards them when the anchor
  is confident; they are only computed when used here (the ImageNet code does the same).
- Randomness (augmentation draws, noise, restore masks) comes from generators seeded from ``seed``
  and a step counter kept as a buffer, on the input's device, not from the global RNGs; ``reset``
  therefore also replays the same random draws.
- The augmentation's padding and crop scale with the input size (see :mod:`tta.augment`); grayscale
  inputs skip saturation and hue, as torchvision does.
- Updated parameters: every parameter named ``weight`` or ``bias``, as the official
  ``collect_params`` and restore loop select (all parameters of CNNs; parameters with other names,
  such as a ViT's class token or position embedding, stay fixed in both).
- ``frozen()`` predicts with the teacher's logits on the batch itself (no augmentation).
- ``augment=`` (Python only) replaces the official augmentation chain with any
  ``augment(x, cpu_generator, device_generator) -> copy`` (:data:`tta.augment.AugmentFn`), called once
  per copy with the step's generators, so its draws are replayed after ``reset`` too; ``augment_soft``
  and ``noise_std`` then have no effect. ``None`` (the default) keeps the official chain.
- ``stats="ema"`` (off by default) is for batch-size-1 streams, where one image's statistics are too
  noisy: the student's BatchNorm layers keep EMA target statistics (momentum ``bn_momentum``) and the
  teacher and anchor normalize with the same current estimate, as in the official code all three use
  the same test-batch statistics. Large benchmark code (mariodoebler/test-time-adaptation) handles
  batch size 1 with a sliding window of recent samples instead; EMA statistics need no window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from adapters_bn import BN_STATS, BNStats, adapt_batchnorm, iter_adaptive
from tta.augment import AugmentFn, augment_copies, check_augment, copies_of, sample_augment_params
from tta.base import TTAMethod
from tta.ema import detached_copy, ema_update_
from tta.losses import soft_cross_entropy, symmetric_cross_entropy
from tta.checks import (
    check_base_options,
    check_bool,
    check_choice,
    check_int,
    check_non_negative,
    check_probability,
    checked_builder,
    finite_step_,
)
from tta.optim import build_optimizer, check_optimizer_options
from tta.params import requires_grad_only
from tta.registry import register_adapter

__all__ = ["CoTTA", "CoTTASettings", "PRESETS", "configure_model", "collect_params", "share_statistics_", "stochastic_restore_"]

CoTTAOptimizer = Literal["adam", "sgd"]

# cifar10: cfgs/cifar10/cotta.yaml (OPTIM.METHOD Adam, LR 1e-3, BETA 0.9, WD 0, MT 0.999, RST 0.01,
# AP 0.92) and the plain soft cross-entropy of cifar/cotta.py. imagenet: imagenet/cfgs/10orders/cotta/*.yaml
# (SGD, LR 0.01, WD 0), imagenet/conf.py (MOMENTUM 0.9, DAMPENING 0, NESTEROV True), and the constants
# hard-coded in imagenet/cotta.py (alpha_teacher 0.999, restore 0.001, threshold 0.1, symmetric loss).
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {"optimizer": "adam", "lr": 1e-3, "ema_momentum": 0.999, "restore_prob": 0.01,
                "confidence_threshold": 0.92, "symmetric_loss": False},
    "imagenet": {"optimizer": "sgd", "lr": 0.01, "ema_momentum": 0.999, "restore_prob": 0.001,
                 "confidence_threshold": 0.1, "symmetric_loss": True},
}


def configure_model(model: nn.Module, stats: BNStats = "batch", momentum: float = 0.1) -> nn.Module:
    """Mode: BN layers on test-batch statistics, model in ``eval()``, weights and biases require grad.

    The official code sets ``requires_grad`` on every parameter but updates only those named
    ``weight``/``bias``; leaving the others without gradients changes no result and saves memory.
    ``stats="ema"`` keeps EMA target statistics instead, for batch-size-1 streams.
    """
    model = adapt_batchnorm(model, stats=stats, momentum=momentum).eval()
    return requires_grad_only(model, [name for name, _ in collect_params(model)])


def collect_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters: every parameter named ``weight`` or ``bias`` (the official ``collect_params``)."""
    return [(name, p) for name, p in model.named_parameters() if name.rpartition(".")[2] in ("weight", "bias")]


@torch.no_grad()
def stochastic_restore_(
    params: Sequence[Tensor], source: Sequence[Tensor], prob: float, generator: torch.Generator | None
) -> None:
    """Put each element of ``params`` back to its ``source`` value with probability ``prob``, in place.

    The mask is drawn per element (``rand < prob``), as the official restore loop does.
    """
    for param, src in zip(params, source):
        mask = torch.rand(param.shape, generator=generator, device=param.device) < prob
        param.copy_(torch.where(mask, src, param))


@torch.no_grad()
def share_statistics_(student: nn.Module, *copies: nn.Module) -> None:
    """Copy the student's current EMA statistics into ``copies`` (teacher, anchor), in place.

    Only layers in ``ema`` mode are copied: in ``batch`` mode every model uses its own batch's.
    """
    layers = [layer for _, layer in iter_adaptive(student)]
    for model in copies:
        for layer, other in zip(layers, (m for _, m in iter_adaptive(model))):
            if layer.stats == "ema":
                other.running_mean.copy_(layer.running_mean)
                other.running_var.copy_(layer.running_var)


def _seed(seed: int, step: int) -> int:
    digest = hashlib.sha256(f"cotta|{seed}|{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _check_teacher_options(
    ema_momentum: object, restore_prob: object, confidence_threshold: object, symmetric_loss: object
) -> None:
    """Raise a clear error unless alpha and p are probabilities, p_th >= 0 and ``symmetric_loss`` a bool.

    A threshold of 1 or more averages over augmentations on every batch (no confidence reaches it).
    """
    check_probability("ema_momentum", ema_momentum)
    check_probability("restore_prob", restore_prob)
    check_non_negative("confidence_threshold", confidence_threshold)
    check_bool("symmetric_loss", symmetric_loss)


def _check_sampling_options(num_augmentations: object, max_images: object, seed: object) -> None:
    """Raise a clear error unless the augmentation count, batch cap and seed are ints in range."""
    check_int("num_augmentations", num_augmentations, minimum=1)
    if max_images is not None:
        check_int("max_images", max_images, minimum=1)
    check_int("seed", seed)


def _preset_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the preset's settings overridden by the given ``options`` that are not ``None``."""
    chosen = dict(PRESETS[options["preset"]])
    chosen.update({k: options[k] for k in chosen if options.get(k) is not None})
    return chosen


def _check_options(options: Mapping[str, Any]) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a ``from_model`` option out of its type or range.

    The preset's values count where an option is ``None``.
    """
    check_choice("preset", options["preset"], PRESETS)
    chosen = _preset_options(options)
    check_optimizer_options(chosen["optimizer"], chosen["lr"], choices=get_args(CoTTAOptimizer))
    _check_teacher_options(chosen["ema_momentum"], chosen["restore_prob"], chosen["confidence_threshold"],
                           chosen["symmetric_loss"])
    _check_sampling_options(options["num_augmentations"], options["max_images"], options["seed"])
    check_augment(options["augment"])
    check_base_options(steps=options["steps"], episodic=options["episodic"], input_ndim=options["input_ndim"])
    check_choice("stats", options["stats"], BN_STATS)
    check_probability("bn_momentum", options["bn_momentum"])


def _couples_samples(model: nn.Module) -> bool:
    """Whether a sample's output depends on the rest of its batch (batch-statistics normalization)."""
    if any(layer.stats in ("batch", "mix") for _, layer in iter_adaptive(model)):
        return True
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
               for m in model.modules())


@dataclass(frozen=True)
class CoTTASettings:
    """CoTTA's hyperparameters as :meth:`CoTTA.from_model` resolved (preset applied) and checked them.

    The options and their defaults are declared once, by ``from_model``; ``augment_soft`` and
    ``noise_std`` (the official augmentation chain's variant and noise) are not options of it.
    """

    ema_momentum: float
    restore_prob: float
    confidence_threshold: float
    symmetric_loss: bool
    num_augmentations: int
    max_images: int | None
    augment: AugmentFn | None
    seed: int
    augment_soft: bool = False
    noise_std: float = 0.005


@register_adapter("cotta")
class CoTTA(TTAMethod):
    """CoTTA on a configured model and its optimizer (see :meth:`from_model` for the official recipe).

    Returns the teacher's logits: averaged over augmented copies when the anchor is unsure,
    else on the batch itself; both from before this batch's update.
    """

    uses_grad = True
    changes = "all"
    exports = "frozen"  # the teacher it predicts with
    quick_options: ClassVar[Mapping[str, object]] = {"num_augmentations": 2}
    step_count: Tensor  # buffer, declared for type checkers

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: CoTTASettings,
        *,
        steps: int = 1,
        episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> None:
        super().__init__(model, steps=steps, episodic=episodic, input_ndim=input_ndim)
        self.optimizer, self.optimizers = optimizer, [optimizer]
        self.teacher = self._frozen_copy(model)
        self.anchor = self._frozen_copy(model)
        # plain attributes, so that saved states record them (tta.state.method_settings)
        self.ema_momentum, self.restore_prob = settings.ema_momentum, settings.restore_prob
        self.confidence_threshold, self.symmetric_loss = settings.confidence_threshold, settings.symmetric_loss
        self.num_augmentations, self.max_images = settings.num_augmentations, settings.max_images
        self.augment_soft, self.noise_std, self.seed = settings.augment_soft, settings.noise_std, settings.seed
        self.augment = settings.augment
        updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
        anchor_params = dict(self.anchor.named_parameters())
        self._restored = [(p, name) for name, p in model.named_parameters() if id(p) in updated]
        self._sources = [anchor_params[name] for _, name in self._restored]
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64))
        self._vmap_works = True  # a speed choice only; set False when vmap fails on these kernels
        self.snapshot()

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        clone = detached_copy(model)
        for _, layer in iter_adaptive(clone):
            layer.update_stats = False  # normalize with batch statistics, store nothing
        return clone

    def step_generators(self, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
        """Return this step's (CPU, device) generators, seeded from ``seed`` and the step counter."""
        seed = _seed(self.seed, int(self.step_count))
        on_device = torch.Generator(device=device).manual_seed(seed)
        return torch.Generator().manual_seed(seed), on_device

    def predict(self, x: Tensor) -> Tensor:
        """Return the teacher's logits on ``x`` (used inside :meth:`frozen`)."""
        return self.teacher(x)

    def augmented_teacher_logits(self, x: Tensor, cpu_gen: torch.Generator, device_gen: torch.Generator) -> Tensor:
        """Return the teacher's logits averaged over ``num_augmentations`` augmented copies of ``x``."""
        coupled = _couples_samples(self.teacher)
        total: Tensor | None = None
        for copies in self._augmented_chunks(x, cpu_gen, device_gen):
            if len(copies) == 1:
                logits = self.teacher(copies[0]).unsqueeze(0)
            elif coupled:  # one forward, each copy still normalized by its own batch statistics
                logits = self._coupled_teacher_logits(copies)
            else:
                logits = self.teacher(copies.flatten(0, 1)).unflatten(0, copies.shape[:2])
            total = logits.sum(0) if total is None else total + logits.sum(0)
        if total is None:
            raise RuntimeError(f"num_augmentations must be >= 1, got {self.num_augmentations}")
        return total / self.num_augmentations

    def _augmented_chunks(self, x: Tensor, cpu_gen: torch.Generator, device_gen: torch.Generator) -> Iterator[Tensor]:
        """Yield the augmented copies of ``x``, as many per ``(N, B, ...)`` chunk as one forward takes.

        The official chain draws every copy's parameters first, then applies them chunk by chunk; a
        supplied ``augment`` is called once per copy.
        """
        per_chunk = self._copies_per_forward(x)
        if self.augment is not None:
            for start in range(0, self.num_augmentations, per_chunk):
                count = min(per_chunk, self.num_augmentations - start)
                yield copies_of(x, self.augment, count, cpu_gen, device_gen)
            return
        params = sample_augment_params(self.num_augmentations, x.shape[-2], x.shape[-1], cpu_gen,
                                       soft=self.augment_soft)
        for start in range(0, len(params), per_chunk):
            yield augment_copies(x, params[start : start + per_chunk], device_gen, noise_std=self.noise_std)

    def _coupled_teacher_logits(self, copies: Tensor) -> Tensor:
        """Return the teacher's logits on each copy ``(N, B, ...)``, each normalized by its own statistics."""
        if self._vmap_works:
            try:
                return torch.func.vmap(self.teacher)(copies)
            except RuntimeError as error:
                # Some kernels have no vmap rule (on CUDA, cuDNN convolutions asking whether a
                # tensor is channels_last raise "NYI ... inside of vmap"): fall back for good to
                # separate forwards, the official code's loop, which give the same logits.
                if "vmap" not in str(error):
                    raise
                self._vmap_works = False
        return torch.stack([self.teacher(c) for c in copies])

    def _copies_per_forward(self, x: Tensor) -> int:
        if self.max_images is not None:
            return max(1, self.max_images // x.shape[0])
        # On CPU a bigger batch brings no speed (measured in benchmarks/bench_cotta_lame.py), so
        # one copy per forward; accelerators take all copies in one forward.
        return 1 if x.device.type == "cpu" else self.num_augmentations

    def teacher_target(self, x: Tensor, cpu_gen: torch.Generator, device_gen: torch.Generator) -> Tensor:
        """Return the teacher's target: augmentation-averaged iff the anchor's mean confidence < p_th."""
        anchor_confidence = self.anchor(x).softmax(1).max(1).values.mean(0)
        if anchor_confidence < self.confidence_threshold:
            return self.augmented_teacher_logits(x, cpu_gen, device_gen)
        return self.teacher(x)

    def adapt_step(self, x: Tensor) -> Tensor:
        """Objective and update: student step towards the teacher, EMA, stochastic restore."""
        cpu_gen, device_gen = self.step_generators(x.device)
        student_logits = self.model(x)
        share_statistics_(self.model, self.teacher, self.anchor)
        with torch.no_grad():
            target = self.teacher_target(x, cpu_gen, device_gen)
        loss_fn = symmetric_cross_entropy if self.symmetric_loss else soft_cross_entropy
        loss = loss_fn(student_logits.float(), target.float()).mean(0)  # float32 loss under autocast
        finite_step_("CoTTA", loss, self.optimizer, logits=target)  # refuses the batch before anything below
        ema_update_(self.teacher, self.model, self.ema_momentum)
        stochastic_restore_([p for p, _ in self._restored], self._sources, self.restore_prob, device_gen)
        self.step_count += 1
        return target

    @classmethod
    @checked_builder(_check_options)
    def from_model(
        cls,
        model: nn.Module,
        *,
        preset: Literal["cifar10", "imagenet"] = "cifar10",
        optimizer: CoTTAOptimizer | None = None,
        lr: float | None = None,
        ema_momentum: float | None = None,
        restore_prob: float | None = None,
        confidence_threshold: float | None = None,
        symmetric_loss: bool | None = None,
        num_augmentations: int = 32,
        max_images: int | None = None,
        augment: AugmentFn | None = None,
        seed: int = 0,
        steps: int = 1,
        episodic: bool = False,
        stats: BNStats = "batch",
        bn_momentum: float = 0.1,
        input_ndim: int | None = 4,
    ) -> CoTTA:
        """Configure ``model`` (in place) and build CoTTA with an official preset; ``None`` keeps the preset's value.

        Args:
            model: Any classifier taking images in [0, 1] (normalization inside the model).
            preset: ``cifar10`` (``cfgs/cifar10/cotta.yaml``) or ``imagenet`` (``imagenet/cotta.py``).
            optimizer: ``adam`` or ``sgd`` (Nesterov, momentum 0.9).
            lr: Learning rate.
            ema_momentum: Teacher EMA momentum (alpha, eq. 2).
            restore_prob: Per-element stochastic restore probability (p).
            confidence_threshold: Anchor confidence below which targets are augmentation-averaged (p_th).
            symmetric_loss: Symmetric soft cross-entropy (ImageNet code) instead of the plain one.
            num_augmentations: Augmented copies per averaged target (N = 32 officially).
            max_images: Most images per teacher forward over the augmented copies (at least one copy
                per forward); ``None`` puts all copies in one forward on accelerators and one copy
                per forward on CPU.
            augment: Makes each augmented copy instead of the official chain: ``augment(x, cpu_generator,
                device_generator)`` returns one copy of the batch ``x`` (same shape, dtype and device) and
                draws its randomness from the two generators; ``None`` keeps the official chain.
            seed: Seed of the augmentation and restore randomness.
            steps: Updates per batch (1 officially).
            episodic: Reset to the source state before every batch.
            stats: BN statistics: ``batch`` (official) or ``ema`` for batch-size-1 streams (a
                deviation, off by default; see the module docstring).
            bn_momentum: EMA momentum of the BN statistics when ``stats="ema"``.
            input_ndim: Expected input rank.

        Raises:
            TypeError: an option of the wrong type (e.g. ``seed="a"``, ``episodic="no"``, an ``augment`` that
                is not callable).
            ValueError: an option out of range (e.g. ``confidence_threshold=2``), or a model with no
                parameter to adapt.
        """
        # the options were checked (checked_builder) before the model is touched: a rejected call changes nothing
        chosen = _preset_options({"preset": preset, "optimizer": optimizer, "lr": lr, "ema_momentum": ema_momentum,
                                  "restore_prob": restore_prob, "confidence_threshold": confidence_threshold,
                                  "symmetric_loss": symmetric_loss})
        model = configure_model(model, stats, bn_momentum)
        params = [p for _, p in collect_params(model)]
        if not params:  # after conversion: a FrozenBatchNorm2d's weight and bias only become parameters there
            raise ValueError(
                f"CoTTA has no parameters to adapt: {type(model).__name__} has no parameter named 'weight' or "
                "'bias' (the ones CoTTA updates); use 'source' or 'lame' for such a model"
            )
        opt = build_optimizer(params, chosen["optimizer"], lr=chosen["lr"])  # momentum 0.9, wd 0 in both configs
        settings = CoTTASettings(
            ema_momentum=chosen["ema_momentum"], restore_prob=chosen["restore_prob"],
            confidence_threshold=chosen["confidence_threshold"], symmetric_loss=chosen["symmetric_loss"],
            num_augmentations=num_augmentations, max_images=max_images, augment=augment, seed=seed,
        )
        return cls(model, opt, settings, steps=steps, episodic=episodic, input_ndim=input_ndim)
