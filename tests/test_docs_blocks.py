"""The code blocks of README.md and docs/*.md work as written.

Every fenced ``python`` block runs, in a fresh namespace, on small settings: a prelude defines the names the
docs assume (``model`` is the shipped Fashion-MNIST model, ``images`` a batch of its inputs, ...) and the block
runs in a temporary folder. A block that cannot run here (it needs ImageNet-C, a GPU, a downloaded checkpoint,
or is an excerpt) says why in an HTML comment right before its fence, ``<!-- not run: needs ImageNet-C -->``,
and is reported as skipped with that reason; any other block runs.

Every shell line (of a ``bash`` or plain fence, or an inline ```.venv/bin/tta ...``` span) that calls ``tta``
is parsed by the ``tta`` argument parser, and a ``tta bench`` line is also turned into its benchmark spec with
each method's options checked, so every documented flag, method, corruption and option exists and every value
parses; a shell block marked ``not run`` is only parsed (for a method of the reader's own package). Every
``.venv/bin/python benchmarks/<script>.py`` line names a script whose argument parser accepts the flags, and
every ``bash <script>`` line a script that exists. Nothing long runs: no benchmark, no training, no data read.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from eval.cli import build_parser
from eval.commands.bench import build_spec
from eval.models.source import load_source_model
from tta.registry import check_method_options, get_adapter_class

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^\s*```\s*(?P<lang>[\w+-]*)\s*$")
INLINE_COMMAND = re.compile(r"`(?P<command>\.venv/bin/(?:tta|python) [^`]+)`")
"""An inline command written to be run as is (a bare ``tta bench --methods`` in prose names a flag instead)."""
SHELL_LANGS = ("", "bash", "sh", "shell", "console")

SMALL_SETTINGS: dict[str, dict[str, str]] = {
    "docs/corruptions.md": {"torch.rand(64, 3, 224, 224)": "torch.rand(2, 3, 32, 32)"},
    "docs/dann.md": {"FitConfig(epochs=3, steps_per_epoch=100)": "FitConfig(epochs=1, steps_per_epoch=1)"},
}
"""Per document, text of a python block replaced before it runs, so that it runs in a fraction of a second."""

PLACEHOLDERS = {"<corruption>": "gaussian_noise", "<protocol>": "continual", "<p>": "continual",
                "<store>": "results/tta-results.sqlite"}
"""Placeholders of shell lines and the value a reader would put there."""


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text, and why it is not run (if it says)."""

    doc: str
    line: int
    lang: str
    text: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Return the fenced code blocks of the markdown file ``path``, with the ``not run`` reason before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    doc = path.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), None)
        if end is None:
            raise ValueError(f"{doc}:{i + 1}: code block never closed; end it with ```")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(Block(doc, i + 1, opening["lang"].lower(), "\n".join(lines[i + 1:end]),
                            marker["reason"] if marker else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.lang == "python"]


def inline_commands(path: Path) -> list[Block]:
    """Return the inline ``.venv/bin/...`` commands of the markdown file ``path``, each as a one-line block."""
    doc = path.relative_to(ROOT).as_posix()
    return [Block(doc, number, "bash", match["command"], None)
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            for match in INLINE_COMMAND.finditer(line)]


def shell_commands(block: Block) -> Iterator[list[str]]:
    """Yield the words of each command of a shell block, continuations joined, comments and ``VAR=x`` dropped."""
    text = re.sub(r"\\\n", " ", block.text)
    for line in text.splitlines():
        for placeholder, value in PLACEHOLDERS.items():
            line = line.replace(placeholder, value)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not a command (output, a listing)
            continue
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "||", "|"):
                while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                    command.pop(0)
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def documented_commands(program: str) -> list[tuple[Block, list[str]]]:
    """Return ``(block, arguments)`` of every documented shell command of ``program``.

    ``program`` is ``tta`` (the arguments after it), ``benchmarks`` (``python benchmarks/x.py ...``: the script
    and its arguments) or ``bash`` (``bash scripts/x.sh ...``: the script and its arguments).
    """
    found = []
    for block in [*ALL_BLOCKS, *(command for path in DOCS for command in inline_commands(path))]:
        if block.lang not in SHELL_LANGS:
            continue
        for words in shell_commands(block):
            if program == "tta" and words[0] in ("tta", ".venv/bin/tta"):
                found.append((block, words[1:]))
            if (program == "benchmarks" and words[0] in ("python", ".venv/bin/python") and len(words) > 1
                    and words[1].startswith("benchmarks/")):
                found.append((block, words[1:]))
            if program == "bash" and words[0] == "bash" and len(words) > 1:
                found.append((block, words[1:]))
    return found


TTA_COMMANDS = documented_commands("tta")
BENCHMARK_COMMANDS = documented_commands("benchmarks")


# ---------------------------------------------------------------------------------------------------- python


@pytest.fixture(scope="module")
def source_model() -> torch.nn.Module:
    return load_source_model()


def prelude(source_model: torch.nn.Module) -> dict[str, Any]:
    """The names the docs' python blocks assume: a model, inputs for it, loaders, a denoiser."""
    from eval.training.diffusion import DEFAULT_DIFFUSION_CHECKPOINT
    from tta.projection import load_denoiser

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    return {
        "model": copy.deepcopy(source_model),
        "images": images,
        "x": images,
        "example": images[:1],
        "stream": [images, images],
        "batch": images.numpy(),
        "source_loader": [(images, labels)] * 2,
        "target_loader": [images] * 2,
        "unet": load_denoiser(DEFAULT_DIFFUSION_CHECKPOINT),
    }


def small(block: Block) -> str:
    """Return the block's text with its document's :data:`SMALL_SETTINGS` applied."""
    text = block.text
    for old, new in SMALL_SETTINGS.get(block.doc, {}).items():
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.where for block in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, source_model: torch.nn.Module, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    if block.not_run is not None:
        pytest.skip(f"not run: {block.not_run}")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "assets").symlink_to(ROOT / "eval" / "assets")  # paths the docs give from the root
    monkeypatch.chdir(tmp_path)
    namespace = prelude(source_model)
    exec(compile(small(block), block.where, "exec"), namespace)  # noqa: S102  (the docs' own code)


def test_small_settings_still_apply() -> None:
    """Each replacement of :data:`SMALL_SETTINGS` still finds its text, so no block silently runs at full size."""
    for doc, replacements in SMALL_SETTINGS.items():
        texts = [block.text for block in PYTHON_BLOCKS if block.doc == doc]
        for old in replacements:
            assert any(old in text for text in texts), f"{doc}: no python block contains {old!r} any more"


def test_not_run_markers_precede_a_fence() -> None:
    """A ``not run`` comment gives a reason and sits right before a code block (else it silences nothing)."""
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if "not run" in line and line.strip().startswith("<!--"):
                where = f"{path.relative_to(ROOT)}:{i + 1}"
                marker = NOT_RUN.match(line.strip())
                assert marker is not None and marker["reason"], f"{where}: write <!-- not run: <reason> -->"
                following = next((rest for rest in lines[i + 1:] if rest.strip()), "")
                assert FENCE.match(following), f"{where}: the not-run comment must come right before a ``` fence"


# ---------------------------------------------------------------------------------------------------- shell


def parse_tta(arguments: list[str]) -> argparse.Namespace:
    """Parse ``tta`` arguments with the command's own parser; an argparse error fails with its message."""
    try:
        return build_parser().parse_args(arguments)
    except SystemExit as exit_:
        raise AssertionError(f"`tta {shlex.join(arguments)}` does not parse (exit {exit_.code})") from None


@pytest.mark.parametrize("block, arguments", TTA_COMMANDS, ids=[block.where for block, _ in TTA_COMMANDS])
def test_tta_line_parses(block: Block, arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The line parses; a ``tta bench`` line also builds its spec and its methods accept their options,
    unless its block is marked not run (e.g. it names a method of the reader's own package)."""
    where = block.where
    try:
        args = parse_tta(arguments)
    except AssertionError as error:
        pytest.fail(f"{where}: {error}: {capsys.readouterr().err.strip()}")
    assert args.command is not None, f"{where}: no subcommand"
    if args.command == "bench" and block.not_run is None:
        spec = build_spec(args)
        for method in spec.methods:  # what the suite supplies (the shipped denoiser, a training split) stood in for
            supplied: dict[str, Any] = {need: f"<{need} of the suite>" for need in get_adapter_class(method).needs}
            check_method_options(method, {**supplied, **spec.options[method]})


def load_benchmark(script: Path) -> Any:
    """Import ``benchmarks/<script>.py`` as a module (``benchmarks/`` on the path, as when run)."""
    spec = importlib.util.spec_from_file_location(f"_docs_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Parsed(Exception):
    """Raised in place of running a benchmark once its arguments parsed."""


@pytest.mark.parametrize("block, arguments", BENCHMARK_COMMANDS,
                         ids=[block.where for block, _ in BENCHMARK_COMMANDS])
def test_benchmark_line_parses(block: Block, arguments: list[str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    where = block.where
    script = ROOT / arguments[0]
    assert script.is_file(), f"{where}: {arguments[0]} does not exist"
    monkeypatch.syspath_prepend(str(script.parent))
    module = load_benchmark(script)
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parse(self, *args, **kwargs)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *arguments[1:]])
    try:
        module.main()
    except _Parsed:
        return
    except SystemExit as exit_:
        pytest.fail(f"{where}: `{shlex.join(arguments)}` does not parse (exit {exit_.code}): "
                    f"{capsys.readouterr().err.strip()}")
    pytest.fail(f"{where}: {arguments[0]}'s main() never parsed its arguments")


SCRIPT_COMMANDS = documented_commands("bash")


@pytest.mark.parametrize("block, arguments", SCRIPT_COMMANDS, ids=[block.where for block, _ in SCRIPT_COMMANDS])
def test_shell_script_exists(block: Block, arguments: list[str]) -> None:
    assert (ROOT / arguments[0]).is_file(), f"{block.where}: {arguments[0]} does not exist"


def test_docs_have_commands() -> None:
    """The extraction finds the documented commands (a change of fence style would otherwise check nothing)."""
    assert len(PYTHON_BLOCKS) >= 8 and len(TTA_COMMANDS) >= 20 and len(BENCHMARK_COMMANDS) >= 8
