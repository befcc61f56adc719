"""`sagastream topology versions`: each published version of each saga, and whether it still runs.

Per saga and version: its shape, when and by whom it was published, how many instances not
ended the state changelog holds (read_committed, as `saga list` reads it), and its state:
current (the shape of the topology file given), draining (instances still run on it) or retired
(none run on it and it is not current).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from sagastream.core.saga import TERMINAL
from sagastream.core.state import SagaState, decode_state
from sagastream.core.topology import Topology
from sagastream.ops.inspect import _clock, _table
from sagastream.runtime.definitions import Definition, DefinitionBook
from sagastream.runtime.kafka_io import read_to_end
from sagastream.runtime.settings import Settings

# instances not ended, per saga and pinned shape (None: a state from before versions)
Running = Mapping[tuple[str, str | None], int]
VersionState = Literal["current", "draining", "retired"]


@dataclass(frozen=True)
class VersionRow:
    saga: str
    version: int
    shape: str
    published_ms: int
    published_by: str
    running: int
    state: VersionState


def running_states(settings: Settings, purpose: str) -> Iterator[tuple[bytes, SagaState]]:
    """The saga instances not ended in the state changelog: each key's newest committed record,
    read to the changelog's end now."""
    newest: dict[bytes, SagaState | None] = {}
    for msg in read_to_end(settings, [settings.changelog_topic()], purpose):
        key, value = msg.key(), msg.value()
        if key is None:
            continue
        state = None if value is None else decode_state(value)
        newest[key] = state if state is not None and state.status not in TERMINAL else None
    return ((key, state) for key, state in newest.items() if state is not None)


def count_running(settings: Settings) -> dict[tuple[str, str | None], int]:
    """Instances not ended in the state changelog, by saga and pinned shape."""
    counts: dict[tuple[str, str | None], int] = {}
    for _, state in running_states(settings, "sagastream-versions"):
        version = (state.saga, state.shape)
        counts[version] = counts.get(version, 0) + 1
    return counts


def version_rows(
    definitions: Iterable[Definition], running: Running, topology: Topology
) -> list[VersionRow]:
    """One row per definition; a state without a shape counts for its saga's lowest version."""
    found = sorted(definitions, key=lambda d: (d.saga, d.version, d.published_ms, d.shape))
    lowest = {}
    for d in reversed(found):
        lowest[d.saga] = d.shape
    rows = []
    for d in found:
        count = running.get((d.saga, d.shape), 0)
        if lowest.get(d.saga) == d.shape:
            count += running.get((d.saga, None), 0)
        current = d.saga in topology.sagas and topology.sagas[d.saga].shape == d.shape
        state: VersionState = "current" if current else "draining" if count else "retired"
        rows.append(
            VersionRow(d.saga, d.version, d.shape, d.published_ms, d.published_by, count, state)
        )
    return rows


def versions(settings: Settings, topology: Topology, book: DefinitionBook) -> list[VersionRow]:
    """The rows of every saga's versions: the definitions topic and the changelog, read now."""
    book.read()
    return version_rows(book.versions(), count_running(settings), topology)


def format_versions(rows: list[VersionRow]) -> list[str]:
    header = ["SAGA", "VERSION", "SHAPE", "PUBLISHED", "BY", "RUNNING", "STATE"]
    table = [
        [
            r.saga,
            f"v{r.version}",
            r.shape,
            _clock(r.published_ms),
            r.published_by,
            str(r.running),
            r.state,
        ]
        for r in rows
    ]
    if not table:
        return ["no saga definition is published yet (`sagastream topics create` publishes)"]
    return _table(header, table)
