"""Results: cell records, the SQLite store, error tables, reports and the reference baselines."""
