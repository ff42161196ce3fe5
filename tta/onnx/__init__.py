"""ONNX: export of adapters (frozen snapshots and graphs that adapt), the LAME graph and the edge session."""
