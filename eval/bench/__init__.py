"""The benchmark job: its spec, the work of one unit, the runner and meters, executors, stream states, provenance."""
