"""`sagastream validate`: what a worker checks before it starts, without a broker, for CI.

Three checks, each reported on its own lines: topology.yaml against the schemas (every event's
schema exists; every `inputs`, `params` and `when` refers to fields that exist by then), the
schemas against the app's event models (as `schemas check`), and the app's handler functions
for every handler role, bound as a worker binds them (each command has a function, each
declared return type keeps the handler contract).
"""

from __future__ import annotations

from pathlib import Path

from sagastream.core.topology import Topology, load_topology
from sagastream.errors import SagastreamError
from sagastream.runtime.settings import Settings


def topology_problems(settings: Settings, schemas: Path) -> tuple[Topology | None, list[str]]:
    """The topology read with its schemas, or why it cannot be."""
    try:
        return load_topology(settings.topology_file, schemas), []
    except SagastreamError as exc:
        return None, [str(exc)]


def load_topology_file(path: Path) -> Topology:
    """Another topology file (say, the version being replaced), read as a worker reads its own:
    with the schemas next to it, or SAGASTREAM_SCHEMAS_DIR."""
    settings = Settings(topology_file=path)
    return load_topology(settings.topology_file, settings.schemas_path)


def validate(settings: Settings) -> list[str]:
    """Every problem found, as sentences; empty if a worker of every role could start."""
    from sagastream.app import load_app
    from sagastream.events import records_of, stale_schemas

    topology, problems = topology_problems(settings, settings.schemas_path)
    if topology is None:
        return problems
    module = settings.app or topology.app
    if not module:
        return [
            f"no app module: set `app:` in {settings.topology_file} or pass --app MODULE; "
            "its event models and handler functions are checked against the topology"
        ]
    try:
        problems += stale_schemas(records_of(module), settings.schemas_path)
        app = load_app(module)
    except (SagastreamError, ImportError) as exc:
        return [*problems, f"app module {module}: {exc}"]
    for role in topology.handlers:
        try:
            app.role_handler(role, topology)
        except SagastreamError as exc:
            problems.append(f"handler role {role}: {exc}")
    return problems
