"""Import layering: adapters_bn <- tta <- eval."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("package", "forbidden"), [("adapters_bn", ["tta", "eval"]), ("tta", ["eval"])])
def test_package_does_not_import_upper_layers(package: str, forbidden: list[str]) -> None:
    code = f"import sys, {package}; print([m for m in {forbidden!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
