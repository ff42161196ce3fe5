"""What importing a package loads at run time, which the static import test cannot see.

``tests/test_import_structure.py`` reads every import statement of the three packages (layering
``adapters_bn`` <- ``tta`` <- ``eval``, cycles, private modules). This test runs the import in a fresh
interpreter, so imports made at run time (``importlib``, a dependency's own imports) count too, and
checks that the optional extras of ``pyproject.toml`` stay unloaded until a feature needs them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

OPTIONAL = ["onnx", "onnxruntime", "onnxscript", "diffusers", "matplotlib", "ray"]  # the extras' packages


@pytest.mark.parametrize(("package", "forbidden"), [("adapters_bn", ["tta", "eval", *OPTIONAL]),
                                                    ("tta", ["eval", *OPTIONAL])])
def test_importing_a_package_loads_no_upper_layer_and_no_optional_extra(package: str, forbidden: list[str]) -> None:
    code = f"import sys, {package}; print([m for m in {forbidden!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
