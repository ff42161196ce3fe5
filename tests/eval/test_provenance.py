"""Tests for eval.bench.provenance: every stored cell says which software and data settings produced it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import tta

from eval.bench.spec import BenchSpec
from eval.corruptions import ENGINE_VERSION
from eval.bench.provenance import run_metadata
from eval.models.suites import SuiteSpec


def test_metadata_names_versions_device_and_data_settings() -> None:
    meta = run_metadata(BenchSpec(methods=("source",), suite=SuiteSpec(), device="cpu"))
    assert meta["torch"] == torch.__version__
    assert meta["device"] == "cpu" and meta["runtime"] == "torch"
    assert meta["corruption_engine"] == ENGINE_VERSION
    assert meta["suite"]["severity_table"] == "cifar" and meta["suite"]["dataset"] == "fmnist-c"  # type: ignore[index]
    imagenet = SuiteSpec(dataset="imagenet-c", data_root=Path("C"), arch="resnet50", weights=Path("w.pth"), per_class=5)
    assert run_metadata(BenchSpec(methods=("source",), suite=imagenet))["suite"]["per_class"] == 5  # type: ignore[index]
    assert meta["library"] == tta.__version__
    json.dumps(meta)  # storable as JSON
