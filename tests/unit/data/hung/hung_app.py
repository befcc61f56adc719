"""A probe service written as plain functions: one that hangs past its step's bound, one that
works as long but says it is alive (the kit's test of plain functions' run-time bound)."""

from __future__ import annotations

import time

import sagastream

app = sagastream.App()


class ProbeRequested(sagastream.Event):
    """Starts the probe saga: `seconds` of work, in `parts` with a heartbeat after each."""

    probe_id: str
    seconds: float
    parts: int


class RunProbe(sagastream.Command):
    probe_id: str
    seconds: float
    parts: int


class ProbeDone(sagastream.Event):
    probe_id: str


@app.handler
def run_probe(cmd: RunProbe) -> ProbeDone:
    for _ in range(cmd.parts):
        time.sleep(cmd.seconds / cmd.parts)  # a blocking call, as to a gateway that hangs
        if cmd.parts > 1:
            sagastream.heartbeat()
    return ProbeDone(probe_id=cmd.probe_id)
