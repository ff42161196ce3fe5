"""Evaluation protocols: in which order test domains and samples arrive, and when the adapter is reset."""
