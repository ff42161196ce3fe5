"""Benchmarks: corruptions, datasets, protocols, metrics, runner and the ``tta`` command line."""
