"""What operators run: the CLI, demo, bench, topic admin, event client and signals."""
