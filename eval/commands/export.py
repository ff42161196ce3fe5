"""``tta export``: write the source model, adapted by a method, as a verified ONNX graph for edge runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from eval.commands.errors import CLIError
from eval.commands.options import parse_floats, parse_ints, parse_options
from eval.commands.paths import check_output_file
from eval.commands.help import show_defaults
from eval.models.source import DEFAULT_CHECKPOINT

NAME = "export"
HELP = "export the source model with a method's adaptation to ONNX (frozen snapshot or adaptive graph)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add flags mapping 1:1 to :func:`tta.export_onnx` and the optional adaptation before a frozen export."""
    show_defaults(p)
    p.add_argument("--method", default="norm", help="method whose state or adaptation is exported (see `tta list`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method keyword option, repeatable, e.g. stats=ema")
    p.add_argument("--mode", default="frozen", choices=["frozen", "adaptive"],
                   help="frozen: current statistics and affine parameters baked in; adaptive: BatchNorm "
                        "computes test-batch statistics inside the graph")
    p.add_argument("--prior", type=float, default=None,
                   help="adaptive: weight of the source statistics (alpha-BN), 0 = pure batch statistics")
    p.add_argument("--ema-momentum", type=float, default=None,
                   help="adaptive: carry EMA statistics across calls as graph inputs/outputs")
    p.add_argument("--lame-head", default=None, metavar="MODULE",
                   help="append LAME output correction, on the features entering this head module (e.g. fc)")
    p.add_argument("--lame-knn", type=int, default=5, help="LAME: neighbours in the kNN affinity")
    p.add_argument("--lame-steps", type=int, default=10, help="LAME: fixed number of Laplacian steps")
    p.add_argument("--adapt-on", default=None, metavar="CORRUPTION-SEVERITY",
                   help="frozen: first adapt on batches of this Fashion-MNIST-C domain, e.g. gaussian_noise-5")
    p.add_argument("--adapt-batches", type=int, default=10, help="batches for --adapt-on")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the example (and of --adapt-on)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"Fashion-MNIST source checkpoint of `tta train-source` (default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--model", default=None, help="export this architecture instead (as in `tta bench`): "
                   "torchvision name, timm/<name> or module:function")
    p.add_argument("--weights", type=Path, default=None, help="local state_dict file of --model (never downloaded)")
    p.add_argument("--num-classes", type=int, default=1000, help="--model: classes of its head")
    p.add_argument("--mean", default=None, help="--model: input mean inside the model (default: ImageNet's)")
    p.add_argument("--std", default=None, help="--model: input std inside the model (default: ImageNet's)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="shape of one input (default: 1,28,28 for the checkpoint, 3,224,224 for --model)")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder (for --adapt-on)")
    p.add_argument("--seed", type=int, default=0, help="seeds the corruptions and the example batch")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch.onnx exporter: dynamo (torch.export-based) or the deprecated, faster torchscript")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")


def parse_domain(text: str) -> tuple[str, int]:
    """Return ``(corruption, severity)`` from ``name-severity`` (``clean`` alone is severity 0)."""
    if text == "clean":
        return "clean", 0
    name, sep, severity = text.rpartition("-")
    if not sep or not severity.isdigit():
        raise CLIError(f"--adapt-on expects CORRUPTION-SEVERITY such as gaussian_noise-5, got {text!r}")
    return name, int(severity)


def _adapt(adapter: torch.nn.Module, args: argparse.Namespace) -> torch.Tensor:
    """Run ``adapter`` on the first ``--adapt-batches`` batches of ``--adapt-on``; return the last batch."""
    from eval.datasets import CorruptedView, load_fashion_mnist

    if args.adapt_batches < 1:
        raise CLIError(f"--adapt-batches must be >= 1, got {args.adapt_batches}")
    corruption, severity = parse_domain(args.adapt_on)
    images, labels = load_fashion_mnist("test", args.data_root)
    view = CorruptedView(images, labels, corruption, severity, batch_size=args.batch_size, seed=args.seed)
    for index in range(min(args.adapt_batches, len(view))):
        x, _ = view.batch(index)
        adapter(x)
    return x


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """Return the model to export (``--model`` and ``--weights``, else ``--checkpoint``) and the shape of one input."""
    from eval.models.architectures import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, build_model
    from eval.models.source import load_source_model

    if args.model is None:
        for flag, value in (("--weights", args.weights), ("--mean", args.mean), ("--std", args.std)):
            if value is not None:
                raise CLIError(f"{flag} applies to --model only; pass --model ARCH with it")
        shape = (1, 28, 28) if args.input_shape is None else parse_ints(args.input_shape, "--input-shape")
        return load_source_model(args.checkpoint), shape
    if args.checkpoint is not None:
        raise CLIError("--checkpoint and --model both name the model to export; pass one of them")
    if args.weights is None:
        raise CLIError(f"--model {args.model} needs --weights FILE, its local state_dict (nothing is downloaded)")
    if args.adapt_on is not None:
        raise CLIError("--adapt-on adapts on Fashion-MNIST-C, for the Fashion-MNIST checkpoint only, not --model")
    mean = IMAGENET_MEAN if args.mean is None else parse_floats(args.mean, "--mean")
    std = IMAGENET_STD if args.std is None else parse_floats(args.std, "--std")
    spec = ModelSpec(args.model, args.weights, num_classes=args.num_classes, mean=mean, std=std)
    shape = (3, 224, 224) if args.input_shape is None else parse_ints(args.input_shape, "--input-shape")
    return build_model(spec), shape


def run(args: argparse.Namespace) -> int:
    """Build the adapter, optionally adapt it, export and verify; print what was written."""
    import tta
    from eval.bench.spec import check_seed
    from tta.registry import import_methods
    check_seed(args.seed)
    if args.adapt_on is not None and args.mode != "frozen":
        raise CLIError("--adapt-on adapts in PyTorch before a frozen export; an adaptive graph adapts on the device")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        import_methods([args.method])  # a module:Class method or an installed entry point
    except ValueError as error:
        raise CLIError(str(error)) from error
    if args.method not in tta.list_methods():
        raise CLIError(f"unknown method {args.method!r}; available: {tta.list_methods()}")
    check_output_file(args.out, "--out")
    options = parse_options(args.option, [args.method])[args.method]
    lame = None
    if args.lame_head is not None:
        from tta.onnx.lame import LameGraph

        lame = LameGraph(head=args.lame_head, knn=args.lame_knn, steps=args.lame_steps)
    model, shape = _model(args)
    try:
        adapter = tta.wrap(model, args.method, **options)
    except (TypeError, ValueError) as error:
        raise CLIError(f"method {args.method!r} rejects its options {options}: {error}") from None
    if args.adapt_on is not None:
        example = _adapt(adapter, args)
    else:
        example = torch.rand(args.batch_size, *shape, generator=torch.Generator().manual_seed(args.seed))
    try:
        result = tta.export_onnx(adapter, args.out, example, mode=args.mode, prior=args.prior,
                                 ema_momentum=args.ema_momentum, lame=lame, opset=args.opset,
                                 exporter=args.exporter)
    except ImportError as error:
        raise CLIError(str(error)) from None
    if result.mode == "frozen":
        graph = "frozen graph (current statistics and affine parameters fixed)"
    else:
        state = f", {len(result.state_names)} EMA state inputs" if result.state_names else ""
        graph = f"adaptive graph ({result.batchnorm_layers} BatchNorm layers with in-graph statistics{state})"
    graph += ", then LAME" if lame is not None else ""
    print(f"wrote {args.out}: {graph}; max |onnxruntime - torch| = {result.max_abs_diff:.2e} "
          f"on a batch of {len(example)}")
    return 0
