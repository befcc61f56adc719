"""`sagastream saga migrate`: move running instances of a saga from one published version to
another (docs/versioning.md, "Migration").

Owns the operator's half: which version the arguments name, which instances run on the old one
(the state changelog, read_committed, as `topology versions` counts them), the dry run's plan per
instance (`core.migration.plan`), and with `--execute` one `SagaMigrate` per movable instance on
`sagas.signals`, keyed by the saga key. The orchestrator plans again when it applies one
(`core.migration.repin`): the instance may have moved on since.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sagastream.core.migration import MigrationPlan, plan
from sagastream.core.saga import RUNNING
from sagastream.core.state import SagaState
from sagastream.core.topology import MIGRATE_EVENT
from sagastream.errors import UsageError
from sagastream.ops.client import EventClient
from sagastream.ops.terminal import printable
from sagastream.ops.versions import running_states
from sagastream.runtime.definitions import Definition, DefinitionBook
from sagastream.runtime.settings import Settings


@dataclass(frozen=True)
class Planned:
    """One running instance on the old version and what the move would make of it."""

    key: str
    plan: MigrationPlan


def version_of(book: DefinitionBook, saga: str, named: str) -> Definition:
    """The definition `--from`/`--to` names: a version number (`2` or `v2`) or a shape prefix."""
    found = book.versions(saga)
    if not found:
        raise UsageError(
            f"no version of saga {saga} is published on {book.topic} "
            "(`sagastream topics create` publishes; `topology versions` lists them)"
        )
    number = named.lower().removeprefix("v")
    hits = [d for d in found if str(d.version) == number] if number.isdigit() else []
    hits = hits or [d for d in found if d.shape.startswith(named)]
    if len(hits) != 1:
        listed = ", ".join(f"v{d.version} ({d.shape})" for d in found)
        what = "matches several" if hits else "matches none"
        raise UsageError(f"version {named!r} of saga {saga} {what} of: {listed}")
    return hits[0]


def running_on(
    settings: Settings, saga: str, shape: str, lowest: bool
) -> list[tuple[str, SagaState]]:
    """The running instances of `saga` pinned to `shape` (with `lowest`, also those without a
    shape, which the lowest version decides), by key."""
    pinned = (shape, None) if lowest else (shape,)
    return sorted(
        (key.decode("utf-8", "replace"), s)
        for key, s in running_states(settings, "sagastream-migrate")
        if s.saga == saga and s.status == RUNNING and s.shape in pinned
    )


def plan_all(
    old: Definition,
    new: Definition,
    mapping: Mapping[str, str],
    found: Iterable[tuple[str, SagaState]],
) -> list[Planned]:
    """The plan of each instance, as the dry run shows it."""
    return [
        Planned(
            key,
            plan(
                old.spec,
                new.spec,
                mapping,
                {n: (st.status, st.attempt, st.undo_attempt) for n, st in s.steps.items()},
                status=s.status,
            ),
        )
        for key, s in found
    ]


def dry_run_lines(old: Definition, new: Definition, planned: list[Planned]) -> list[str]:
    lines = []
    for p in planned:
        lines.append(f"{old.saga} {printable(p.key)}: {' '.join(p.plan.describe()[:1])}")
        lines += p.plan.describe()[1:]
    movable = sum(p.plan.can_move for p in planned)
    lines.append(
        f"{len(planned)} running on {old.saga} v{old.version} ({old.shape}): {movable} can move "
        f"to v{new.version} ({new.shape}), {len(planned) - movable} cannot"
    )
    return lines


def send_moves(
    client: EventClient,
    old: Definition,
    new: Definition,
    mapping: Mapping[str, str],
    planned: list[Planned],
    by: str,
) -> list[str]:
    """One SagaMigrate per movable instance, all confirmed by the broker (DeliveryFailed names
    each it refused); the lines saying what was sent."""
    lines = []
    for p in planned:
        if not p.plan.can_move:
            continue
        fields = {
            "saga_type": old.saga,
            "from_shape": old.shape,
            "to_shape": new.shape,
            "mapping": dict(mapping),
            "requested_by": by,
        }
        meta = client.publish(MIGRATE_EVENT, p.key, fields)
        lines.append(
            f"sent {MIGRATE_EVENT} for {old.saga} {printable(p.key)}: v{old.version} -> v{new.version} "
            f"(event {meta['event_id']})"
        )
    client.flush()
    return lines
