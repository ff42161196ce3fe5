"""Models of the benchmark: architectures from local weights, the shipped source model, and the suites that pair them with data."""
