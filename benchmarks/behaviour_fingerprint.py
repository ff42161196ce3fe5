"""Print the numbers a refactoring must not change, so two checkouts can be compared with ``diff``.

Four things, each through the command line a user runs:

1. the README's embedded table (``tta bench`` with its defaults), at full precision;
2. the protocol table on ``--limit 500`` (source, norm, tent, cotta, lame under the seven protocols);
3. ONNX exports (norm adaptive, tent frozen after adapting) run in onnxruntime on a fixed batch;
4. a results-store round trip (``tta report`` in markdown, CSV and JSON from the stores above).

Run it on two checkouts and diff the outputs::

    .venv/bin/python benchmarks/behaviour_fingerprint.py > after.txt
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/behaviour_fingerprint.py > before.txt

``--quick`` keeps the default table to 1,000 images per domain and drops CoTTA from the protocols,
for a check in a few minutes.
"""

from __future__ import annotations

import argparse
import csv
import io
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TIMING = {"seconds", "peak_memory_mb", "images_per_second", "created"}  # differ between two identical runs
PROTOCOLS = ("episodic", "continual", "gradual", "mixed", "mixed-samples", "class-sorted", "dirichlet")


def _tta(*args: str) -> str:
    """Run the ``tta`` command line of the checkout this interpreter imports; return its stdout."""
    command = [sys.executable, "-c", "import sys; from eval.cli import main; sys.exit(main())", *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"tta {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _cells(store: Path) -> list[str]:
    """Every stored cell's identity and metrics at full precision, sorted (timings left out)."""
    rows = json.loads(_tta("report", "--results", str(store), "--format", "json"))["records"]
    kept = []
    for row in rows:
        row = {k: v for k, v in row.items() if k not in TIMING | {"meta"}}
        kept.append(json.dumps(row, sort_keys=True))
    return sorted(kept)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _onnx_outputs(path: Path) -> str:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    feeds = {session.get_inputs()[0].name: x}
    for extra in session.get_inputs()[1:]:  # carried statistics of EMA graphs: not used by these exports
        raise SystemExit(f"unexpected graph input {extra.name}")
    logits = session.run(None, feeds)[0]
    return f"shape {logits.shape} sum {logits.sum():.6f} argmax {np.argmax(logits, 1).tolist()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 images per domain; no CoTTA in the protocols")
    args = parser.parse_args()
    import eval

    print(f"# checkout: {Path(eval.__file__).resolve().parent.parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        default = tmp / "default.sqlite"
        _tta("bench", "--results", str(default), *(["--limit", "1000"] if args.quick else []))
        print("## 1. embedded table")
        print(_tta("report", "--results", str(default)))
        cells = _cells(default)
        print(f"cells {len(cells)} digest {_digest(cells)}")
        print(*cells, sep="\n")

        protocols = tmp / "protocols.sqlite"
        methods = "source,norm,tent,lame" if args.quick else "source,norm,tent,cotta,lame"
        for protocol in PROTOCOLS:
            severities = ["--severities", "1,2,3,4,5"] if protocol == "gradual" else []
            _tta("bench", "--methods", methods, "--protocol", protocol, "--limit", "500",
                 "--results", str(protocols), *severities)
        print("## 2. protocol table, --limit 500")
        print(_tta("report", "--results", str(protocols), "--by-protocol"))
        cells = _cells(protocols)
        print(f"cells {len(cells)} digest {_digest(cells)}")
        print(*cells, sep="\n")

        print("## 3. ONNX exports in onnxruntime")
        _tta("export", "--method", "norm", "--mode", "adaptive", "--out", str(tmp / "norm.onnx"))
        print("norm adaptive:", _onnx_outputs(tmp / "norm.onnx"))
        _tta("export", "--method", "tent", "--mode", "frozen", "--adapt-on", "gaussian_noise-5",
             "--out", str(tmp / "tent.onnx"))
        print("tent frozen after gaussian_noise-5:", _onnx_outputs(tmp / "tent.onnx"))

        print("## 4. store round trip")
        text = _tta("report", "--results", str(protocols), "--format", "md")
        print(f"report --format md: {len(text.splitlines())} lines, digest {_digest(text.splitlines())}")
        rows = list(csv.DictReader(io.StringIO(_tta("report", "--results", str(protocols), "--format", "csv"))))
        kept = sorted(json.dumps({k: v for k, v in r.items() if k not in TIMING | {"meta"}}, sort_keys=True) for r in rows)
        print(f"report --format csv: {len(rows)} rows, digest without timings and provenance {_digest(kept)}")


if __name__ == "__main__":
    main()
