"""The runtime: orchestrator and handler loops, state stores, worker process, settings, metrics."""
