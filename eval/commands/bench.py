"""``tta bench``: score methods on a corruption benchmark (default: fmnist-c, Fashion-MNIST corrupted with CIFAR-10-C's
severity tables), resumably."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.bench.driver import IncompleteBench, OpenedBench, open_for_executor, run_seeds
from eval.bench.executors import EXECUTORS, Executor, create_executor
from eval.bench.spec import BenchSpec, for_seeds
from eval.bench.stream_checkpoints import states_folder
from eval.commands.errors import CLIError
from eval.commands.help import show_defaults
from eval.commands.options import parse_floats, parse_options, split_csv
from eval.commands.output import print_output
from eval.commands.paths import check_output_file
from eval.commands.progress import BenchProgress, progress_bar
from eval.corruptions import DEFAULT_CORRUPTIONS, list_corruptions
from eval.datasets.source_split import check_source_data
from eval.models.source import DEFAULT_CHECKPOINT
from eval.models.suites import (
    DATASETS,
    SEVERITY_TABLES,
    SUITE_SETTINGS,
    SuiteSpec,
    normalization,
)
from eval.protocols.registry import list_protocols
from eval.results.store import ResultsStore
from eval.results.tables import Results
from tta.files import write_text_atomically
from tta.registry import list_methods
from tta.source_data import uses_source_data

NAME = "bench"
HELP = "score methods on a corruption benchmark (default: fmnist-c, Fashion-MNIST + CIFAR-10-C severities)"
DEFAULT_RESULTS = Path("results") / "tta-results.sqlite"
OUT_FORMATS = (".json", ".csv", ".md")
"""Extensions ``--out`` writes: the records as JSON or CSV, or the markdown table."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the bench flags; each maps 1:1 to a :class:`~eval.bench.driver.BenchSpec` field."""
    show_defaults(p)
    p.add_argument("--dataset", default="fmnist-c", choices=list(DATASETS),
                   help="fmnist-c (Fashion-MNIST + CIFAR-10-C severities, corrupted on the fly, shipped model; not "
                        "Weiss and Tonella's Fashion-MNIST-C) or a corrupted set on disk under --data-root; a flag "
                        "the dataset does not use is an error")
    p.add_argument("--methods", default="source,norm,tent",
                   help="comma-separated methods (see `tta list`), or module:Class naming a TTAMethod subclass outside "
                        "this package (importable here and in every worker)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method keyword option, repeatable, e.g. tent.lr=0.001 or norm.stats=ema")
    p.add_argument("--corruptions", default="default",
                   help="'default' (the 15 common ImageNet-C corruptions), 'available' (all 19), or a comma-separated list; "
                        "'clean' adds the uncorrupted test set")
    p.add_argument("--severities", default="5", help="comma-separated severities in 1..5")
    p.add_argument("--protocol", default="episodic", choices=list_protocols(),
                   help="episodic: reset at each domain; continual: never reset; dirichlet: each domain's samples "
                        "in Dirichlet label clusters; continual-dirichlet: both, never reset (RoTTA's setting)")
    p.add_argument("--dirichlet-delta", type=float, default=None, metavar="DELTA",
                   help="dirichlet, continual-dirichlet: the Dirichlet concentration (default 0.1; smaller: longer "
                        "single-class runs, larger: closer to i.i.d.); stored as part of the protocol")
    p.add_argument("--batch-size", type=int, default=128, help="test images per batch")
    p.add_argument("--seed", type=int, action="append", default=None,
                   help="seeds the corruptions and shuffled protocols (default 0); repeat for several seeds")
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="comma-separated seeds, e.g. 0,1,2: the grid runs once per seed, every seed's cells stored")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"fmnist-c: source model checkpoint (default: the shipped {DEFAULT_CHECKPOINT.name})")
    p.add_argument("--severity-table", default=None, choices=SEVERITY_TABLES,
                   help="fmnist-c: the severity constants: cifar (default: CIFAR-10-C's, made for 32 px images) or "
                        "imagenet (ImageNet-C's, stored under the dataset id fmnist-c/corruptions-v<N>/imagenet-table)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="fmnist-c: the IDX folder; cifar10-c/cifar100-c: the .npy folder; imagenet-c: the folder root")
    p.add_argument("--model", default=None, help="architecture for on-disk datasets: torchvision name, "
                   "wrn28_10 (RobustBench's CIFAR WideResNet-28-10 layout), timm/<name> or module:function "
                   "(a factory taking num_classes, found in the current directory or on PYTHONPATH)")
    p.add_argument("--weights", type=Path, default=None, help="local state_dict file of --model (never downloaded)")
    p.add_argument("--mean", default=None,
                   help="on-disk datasets: input mean inside the model; default 0,0,0 for cifar10-c/cifar100-c "
                        "(RobustBench models take [0, 1] inputs) and 0.485,0.456,0.406 for imagenet-c (torchvision)")
    p.add_argument("--std", default=None,
                   help="on-disk datasets: input std inside the model; default 1,1,1 for cifar10-c/cifar100-c and "
                        "0.229,0.224,0.225 for imagenet-c")
    p.add_argument("--preprocess", default=None, choices=["res256crop224", "none"],
                   help="imagenet-c: resize 256 + center-crop 224 (RobustBench/Tent/CoTTA; the default), "
                        "or the stored images")
    p.add_argument("--classes", type=Path, default=None, metavar="FILE",
                   help="imagenet-c: the model's class names (wnids), one a line in its output order; needed when "
                        "the folders hold fewer classes than the model (labels are then indices in this list)")
    p.add_argument("--per-class", type=int, default=None,
                   help="imagenet-c: first N images of each class (5 = the 5,000-image evaluation size)")
    p.add_argument("--subset-file", type=Path, default=None,
                   help="imagenet-c: text file of <wnid>/<image> lines to use (e.g. RobustBench's 5,000 ids)")
    p.add_argument("--source-data", type=Path, default=None, metavar="PATH",
                   help="methods that use source data: the training split to read instead of the suite's default "
                        "(fmnist-c: the IDX folder; cifar10-c/cifar100-c: the python release folder; imagenet-c, "
                        "which has no default: the training folder of <wnid>/<image> class folders)")
    p.add_argument("--workers", type=int, default=None,
                   help="on-disk datasets: data-loading worker processes (default 0: load in this process)")
    p.add_argument("--online-cost", default=None,
                   help="online protocol: 'auto' or C >= 1; a method C times slower than inference adapts on "
                        "one batch in ceil(C), the others are predicted without adapting")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, or auto")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                   help="onnx: export each method (source frozen, norm adaptive) and score it in onnxruntime")
    _add_executor_arguments(p)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="SQLite results store; finished cells are kept and skipped on rerun")
    p.add_argument("--stream-states", action=argparse.BooleanOptionalAction, default=True,
                   help="continual-like streams: save the adapter's state after each domain in <results>.streams/ "
                        "so an interrupted stream resumes at its first missing domain (one file per running "
                        "stream, deleted when the stream is stored)")
    p.add_argument("--out", type=Path, default=None,
                   help="also write the records (.json or .csv) or the markdown table (.md), chosen by extension")



def _add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """Add the flags that choose where the grid's units run (see :func:`build_executor`)."""
    p.add_argument("--executor", default="local", choices=list(EXECUTORS),
                   help="where cells run: local (this process), processes (--jobs worker processes on this machine) "
                        "or ray (one Ray task per unit; pip install '.[ray]'); either way this process alone writes "
                        "--results")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes: worker processes (default: the CPU cores); each gets cores/jobs torch threads "
                        "unless --cpus-per-cell says otherwise")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="ray: the cluster to join (auto: the one started here by `ray start`); default: "
                        "RAY_ADDRESS, else a private Ray instance on this machine")
    p.add_argument("--cpus-per-cell", type=float, default=None,
                   help="ray: CPU cores each task reserves (default 1); processes: torch threads per worker")
    p.add_argument("--gpus-per-cell", type=float, default=None,
                   help="ray: GPUs each task reserves, fractions share a GPU (default 0; needed for --device cuda)")
    p.add_argument("--max-retries", type=int, default=None,
                   help="times a failing unit is run again before it is reported (default: 0 local, 1 processes, 2 ray)")


def _corruption_list(text: str) -> list[str]:
    if text == "default":
        return list(DEFAULT_CORRUPTIONS)
    if text in ("available", "all"):
        return list_corruptions("available")
    return split_csv(text)


def build_spec(args: argparse.Namespace) -> BenchSpec:
    """Return the benchmark spec the parsed flags describe."""
    methods = split_csv(args.methods)
    try:
        severities = tuple(int(s) for s in split_csv(args.severities))
    except ValueError:
        raise CLIError(f"--severities expects integers like 5 or 1,3,5, got {args.severities!r}") from None
    defaults = {"checkpoint": args.checkpoint, "preprocess": args.preprocess, "num_workers": args.workers,
                "severity_table": args.severity_table}  # None: the SuiteSpec default
    suite = SuiteSpec(
        dataset=args.dataset, data_root=args.data_root, arch=args.model,
        weights=args.weights, mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"),
        per_class=args.per_class, subset_file=args.subset_file, source_data=args.source_data, classes=args.classes,
        **{name: value for name, value in defaults.items() if value is not None},
    )
    online = args.online_cost
    if online not in (None, "auto"):
        online = parse_floats(online, "--online-cost")[0]
    return BenchSpec(
        methods=tuple(methods), options=parse_options(args.option, methods),
        corruptions=tuple(_corruption_list(args.corruptions)), severities=severities,
        protocol=args.protocol, batch_size=args.batch_size, seed=seeds(args)[0], limit=args.limit,
        suite=suite, device=args.device, runtime=args.runtime, online_cost=online, dirichlet_delta=args.dirichlet_delta,
    )


def seeds(args: argparse.Namespace) -> list[int]:
    """Return the seeds of ``--seed`` (repeatable) then ``--seeds``, default ``[0]``; checked by :func:`for_seeds`."""
    listed: list[int] = list(args.seed or [])
    if args.seeds is not None:
        try:
            listed += [int(s) for s in split_csv(args.seeds)]
        except ValueError:
            raise CLIError(f"--seeds expects integers like 0 or 0,1,2, got {args.seeds!r}") from None
        if not listed:
            raise CLIError(f"--seeds names no seed, got {args.seeds!r}; give e.g. 0,1,2")
    return listed or [0]


def build_executor(args: argparse.Namespace) -> Executor:
    """Return the executor the flags ask for.

    The flags were checked by :func:`check_args`.

    Raises:
        CLIError: If a value is out of range, or Ray is missing.
    """
    retries = {} if args.max_retries is None else {"max_retries": args.max_retries}
    try:
        if args.executor == "processes":
            threads = None if args.cpus_per_cell is None else max(1, round(args.cpus_per_cell))
            return create_executor("processes", jobs=args.jobs, threads_per_job=threads, **{"max_retries": 1, **retries})
        if args.executor == "ray":
            return create_executor("ray", address=args.ray_address, cpus_per_unit=args.cpus_per_cell or 1.0,
                                   gpus_per_unit=args.gpus_per_cell or 0.0, **retries)
        return create_executor(args.executor, **retries)
    except (ImportError, ValueError) as error:
        raise CLIError(str(error)) from None


def _check_executor_flags(args: argparse.Namespace) -> None:
    """Raise for a flag given to an executor it does not apply to, or CUDA on Ray without a GPU share."""
    applies = {"--ray-address": ("ray",), "--gpus-per-cell": ("ray",), "--cpus-per-cell": ("ray", "processes"),
               "--jobs": ("processes",)}
    given = {"--ray-address": args.ray_address, "--gpus-per-cell": args.gpus_per_cell,
             "--cpus-per-cell": args.cpus_per_cell, "--jobs": args.jobs}
    wrong = [f"{flag} only applies to --executor {' or '.join(applies[flag])}"
             for flag, value in given.items() if value is not None and args.executor not in applies[flag]]
    if wrong:
        raise CLIError(f"{'; '.join(wrong)}, got --executor {args.executor}")
    if args.executor == "processes" and args.device.startswith("cuda") and args.jobs is None:
        raise CLIError(f"--device {args.device} with --executor processes needs --jobs: every worker process opens "
                       "its own CUDA context on that GPU (the default, one worker per CPU core, would not fit)")
    if args.executor == "ray" and args.device.startswith("cuda") and (args.gpus_per_cell or 0.0) <= 0:
        raise CLIError(f"--device {args.device} with --executor ray needs --gpus-per-cell > 0 "
                       "(Ray hides the GPUs from tasks that reserve none)")


_SUITE_FLAGS = {"checkpoint": "--checkpoint", "severity_table": "--severity-table", "arch": "--model",
                "weights": "--weights", "mean": "--mean", "std": "--std", "num_workers": "--workers",
                "preprocess": "--preprocess", "per_class": "--per-class", "subset_file": "--subset-file",
                "classes": "--classes"}
"""The dataset-specific flags, by the :class:`SuiteSpec` field each sets (``--data-root`` and ``--source-data``
apply to every dataset)."""


def _check_dataset_flags(args: argparse.Namespace) -> None:
    """Raise for a flag the chosen dataset does not use, so a run never silently ignores one."""
    given = {"checkpoint": args.checkpoint, "severity_table": args.severity_table, "arch": args.model,
             "weights": args.weights, "mean": args.mean, "std": args.std, "num_workers": args.workers,
             "preprocess": args.preprocess, "per_class": args.per_class, "subset_file": args.subset_file,
             "classes": args.classes}
    used = SUITE_SETTINGS[args.dataset]
    wrong = [_SUITE_FLAGS[name] for name, value in given.items() if value is not None and name not in used]
    if wrong:
        users = {flag: [d for d in DATASETS if name in SUITE_SETTINGS[d]] for name, flag in _SUITE_FLAGS.items()}
        raise CLIError("; ".join(f"{flag} does not apply to --dataset {args.dataset} (only to {', '.join(users[flag])})"
                                 for flag in wrong) + "; remove it or choose the dataset it is meant for")


def _check_source_data(spec: BenchSpec) -> None:
    """Raise if a method needs source data that is missing, or ``--source-data`` is given and no method uses it."""
    if any(uses_source_data(method) for method in spec.methods):
        check_source_data(spec.suite)
    elif spec.suite.source_data is not None:
        known = [method for method in list_methods() if uses_source_data(method)]
        users = f"methods that use source data ({', '.join(known)})" if known else "methods that use source data"
        raise CLIError(f"--source-data only applies to {users}, and none of --methods {','.join(spec.methods)} does")


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    return None if text is None else parse_floats(text, flag)


def write_results(results: Results, path: Path) -> None:
    """Write records as JSON or CSV, or the markdown table, by the extension (one of :data:`OUT_FORMATS`)."""
    check_output_file(path, "--out", suffixes=OUT_FORMATS)
    text = {".json": results.to_json, ".csv": results.to_csv, ".md": results.to_markdown}[path.suffix.lower()]()
    write_text_atomically(path, text)


def check_args(args: argparse.Namespace) -> tuple[BenchSpec, OpenedBench]:
    """Check every flag, output path, file and method option before any work; return the spec and its opened suite.

    Raises:
        CLIError, ValueError, FileNotFoundError: For the first problem found, nothing written yet.
    """
    try:
        spec = build_spec(args)
    except ImportError as error:  # --runtime onnx without the onnx extra
        raise CLIError(str(error)) from None
    for_seeds(spec, seeds(args))  # every seed checked before any work
    _check_dataset_flags(args)
    _check_executor_flags(args)
    _check_source_data(spec)
    check_output_file(args.results, "--results")
    if args.out is not None:
        check_output_file(args.out, "--out", suffixes=OUT_FORMATS)
    # Ray units run on the cluster's nodes, which may have devices this one lacks
    return spec, open_for_executor(spec, args.executor)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the markdown table.

    Returns 0 when every cell is stored, 1 when some units failed after their retries (the others
    are stored and listed), 130 when interrupted (finished cells are kept).
    """
    spec, suite = check_args(args)
    _print_normalization(spec)
    executor = build_executor(args)
    try:
        return _run_with(args, spec, suite, executor)
    finally:
        executor.close()


def _print_normalization(spec: BenchSpec) -> None:
    """Say on stderr which input normalization an on-disk suite's model applies, as a wrong one gives wrong numbers."""
    if spec.suite.dataset == "fmnist-c":
        return
    mean, std = normalization(spec.suite)
    print(f"normalization inside the model: mean={mean}, std={std} (--mean/--std; the {spec.suite.dataset} default "
          f"is {'ImageNet statistics' if spec.suite.dataset == 'imagenet-c' else 'none: [0, 1] inputs'})",
          file=sys.stderr)


def _run_with(args: argparse.Namespace, spec: BenchSpec, suite: OpenedBench, executor: Executor) -> int:
    """Run the benchmark with ``executor``, store and print it (see :func:`run` for the exit statuses)."""
    status = 0
    with ResultsStore(args.results) as store:  # opened (and checked) before the bar draws its first line
        progress = BenchProgress(progress_bar("bench", "batch"))
        try:
            results = run_seeds(spec, seeds(args), store, executor=executor, opened=suite,
                                on_start=lambda total, stored: progress.start(total, stored, where=str(args.results),
                                                                              methods=spec.methods),
                                on_batch=progress.batch, on_unit=progress.unit, on_cell=progress.cell,
                                stream_states=states_folder(args.results) if args.stream_states else None)
        except KeyboardInterrupt:
            progress.close()
            print(f"interrupted: finished cells are saved in {args.results}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        except IncompleteBench as incomplete:
            progress.close()
            print(f"tta: error: {incomplete}\nthe other cells are saved in {args.results}; rerun the same command "
                  "to retry only the missing ones", file=sys.stderr)
            results, status = incomplete.results, 1
        finally:
            progress.close()
    print_output(results.to_markdown())
    if args.out is not None:
        write_results(results, args.out)
    _print_where(args)
    return status


def _print_where(args: argparse.Namespace) -> None:
    """Say on stderr where the results went: the store (readable with ``tta report``) and ``--out``."""
    out = f"; {args.out} written" if args.out is not None else ""
    print(f"results stored in {args.results} (see `tta report --results {args.results}`){out}", file=sys.stderr)
