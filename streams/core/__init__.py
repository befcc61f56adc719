"""The saga engine: topology model, the pure decide function and timer logic (no I/O)."""
