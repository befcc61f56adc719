"""`sagastream replay shadow`: the live history of the inputs through a (changed) topology, in a
shadow orchestrator, compared saga by saga with what the live orchestrator decided.

The shadow is an orchestrator in a new consumer group that reads the live input topics (start
events, step results, signals) up to their ends as of its start, in event time
(`runtime/event_time.py`), and writes everything it produces under its own topic prefix. No
handler runs in it: the results it reads are the live ones, so it shows what the topology would
have decided about the same history (a renamed step's results answer its new name; a result
whose command the shadow sends later waits for it: `runtime/event_time.py`).

A changed topology changes some decisions on purpose: a renamed step's commands go out under
its new name, an added step's are new, a removed step's are gone. A saga whose differences are
only those, as `topology diff` finds them (`Explanation`), with the same outcome, differs "only
as the diff says"; any other difference (an outcome, a step's commands that changed otherwise)
is one to read, and only those count for `--fail-on-diff`. Comparing is pure (`decisions`,
`compare`); reading the topics and running the shadow are kept apart from it.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Message

from sagastream.core.state import decode_state
from sagastream.core.topology import OUTCOME_EVENTS, SagaSpec, Topology, load_topology
from sagastream.errors import ClusterError, UsageError
from sagastream.ops.admin import admin_client, create_topics, delete_topics
from sagastream.ops.replay import Target, commit_plan, plan_rows, read_offsets
from sagastream.ops.topology_diff import renamed_steps
from sagastream.runtime.event_time import EventTimeOrchestrator, Partition
from sagastream.runtime.inputs import logical_topic
from sagastream.runtime.kafka_io import read_ranges, reader
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.orchestrator import ROLE
from sagastream.runtime.outputs import now_ms
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, DecodeError, SchemaStore
from sagastream.wire.registry import Registry, build_codec, delete_subjects, plan_subjects

SagaId = tuple[str, str]  # (saga type, saga key)


# -- comparing (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """One decoded record of a topic: a start event, a command or an outcome."""

    topic: str
    partition: int
    offset: int
    key: str
    event_type: str
    record: dict[str, Any]


@dataclass
class Decided:
    """What one run decided for a saga: its outcome and, per step, its commands in order."""

    outcome: dict[str, Any] | None = None
    commands: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Difference:
    """A saga whose outcome or commands differ: (live, shadow) for each thing that differs, and
    whether the topology's diff explains all of it."""

    saga: str
    key: str
    outcome: tuple[str, str] | None
    steps: tuple[tuple[str, str, str], ...]
    explained: bool = False

    def line(self) -> str:
        parts = [] if self.outcome is None else [f"outcome {self.outcome[0]} -> {self.outcome[1]}"]
        parts += [f"{step}: {live} -> {shadow}" for step, live, shadow in self.steps]
        return f"{self.saga} {self.key}: " + "; ".join(parts)


def decisions(outputs: Iterable[Output], started: Mapping[str, str]) -> dict[SagaId, Decided]:
    """Each saga's outcome and commands, from the records one run produced.

    A command belongs to the saga and step its idempotency key names (`saga:key:step`), else to
    the saga started with its key; a step's commands are in the order they were decided.
    """
    runs: dict[SagaId, Decided] = {}
    ordered = sorted(
        outputs, key=lambda o: (o.record["meta"]["occurred_at"], o.topic, o.partition, o.offset)
    )
    for out in ordered:
        if out.event_type in OUTCOME_EVENTS:
            saga: str | None = out.record.get("saga_type")
            step = ""
        else:
            saga, step = _owner(out, started)
        if saga is None:
            continue
        run = runs.setdefault((saga, out.key), Decided())
        if out.event_type in OUTCOME_EVENTS:
            if run.outcome is None:
                fields = {k: v for k, v in out.record.items() if k != "meta"}
                run.outcome = {"event_type": out.event_type, **fields}
        else:
            attempt = out.record["meta"]["attempt"]
            run.commands.setdefault(step, []).append(f"{out.event_type}#{attempt}")
    return runs


def _owner(out: Output, started: Mapping[str, str]) -> tuple[str | None, str]:
    key = out.record.get("idempotency_key")
    if isinstance(key, str):
        saga, _, rest = key.partition(":")
        if rest.startswith(f"{out.key}:"):
            return saga, rest[len(out.key) + 1 :].removesuffix(":undo")
    return started.get(out.key), str(out.record.get("step") or out.event_type)


@dataclass(frozen=True)
class Explanation:
    """What `topology diff` says of one saga's steps, live -> shadow: the differences it
    explains. Renamed steps (old -> new), steps added and removed: their commands; steps whose
    dependencies changed: where they come in the order of the outcome's step lists."""

    renamed: Mapping[str, str] = field(default_factory=dict)
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    rewired: frozenset[str] = frozenset()

    @classmethod
    def of(cls, live: SagaSpec, shadow: SagaSpec) -> Explanation:
        renamed = renamed_steps(live, shadow)
        kept = {s: renamed.get(s, s) for s in live.steps if renamed.get(s, s) in shadow.steps}
        return cls(
            renamed,
            frozenset(shadow.steps) - set(kept.values()),
            frozenset(live.steps) - set(kept),
            frozenset(
                new
                for old, new in kept.items()
                if set(_renamed(live.steps[old].depends_on, renamed))
                != set(shadow.steps[new].depends_on)
            ),
        )

    def __bool__(self) -> bool:
        return bool(self.renamed or self.added or self.removed or self.rewired)

    def text(self) -> str:
        """`shipping -> ship, notify added, audit removed, ship after other steps`."""
        parts = [f"{old} -> {new}" for old, new in sorted(self.renamed.items())]
        parts += [f"{step} added" for step in sorted(self.added)]
        parts += [f"{step} removed" for step in sorted(self.removed)]
        parts += [f"{step} after other steps" for step in sorted(self.rewired)]
        return ", ".join(parts)

    def live(self, run: Decided) -> Decided:
        """The live run's decisions as the shadow would name them: renamed steps under their
        new names, removed steps' commands left out."""
        commands = {
            self.renamed.get(step, step): sent
            for step, sent in run.commands.items()
            if step not in self.removed
        }
        return Decided(self._outcome(run.outcome), commands)

    def shadow(self, run: Decided) -> Decided:
        """The shadow's decisions without the added steps' commands."""
        commands = {s: sent for s, sent in run.commands.items() if s not in self.added}
        return Decided(self._outcome(run.outcome), commands)

    def _outcome(self, outcome: dict[str, Any] | None) -> dict[str, Any] | None:
        """An outcome with step names renamed, added and removed steps left out of its step
        lists, and the rewired steps' places in them not counted (a set beside the order)."""
        if outcome is None:
            return None
        out = dict(outcome)
        gone = self.added | self.removed
        for name in ("completed_steps", "compensated_steps"):
            if isinstance(steps := out.get(name), list):
                steps = [s for s in _renamed(steps, self.renamed) if s not in gone]
                out[name] = ([s for s in steps if s not in self.rewired], sorted(steps))
        failed = out.get("failed_step")
        if isinstance(failed, str) and failed in self.renamed:
            out["failed_step"] = self.renamed[failed]
            reason = out.get("reason")
            if isinstance(reason, str) and reason.startswith(f"{failed}: "):
                out["reason"] = f"{self.renamed[failed]}: {reason[len(failed) + 2 :]}"
        return out


def _renamed(steps: Iterable[str], renamed: Mapping[str, str]) -> list[str]:
    return [renamed.get(step, step) for step in steps]


def explanations(live: Topology, shadow: Topology) -> dict[str, Explanation]:
    """Per saga both topologies have, what the diff explains (sagas with nothing left out)."""
    found = {
        n: Explanation.of(live.sagas[n], s) for n, s in shadow.sagas.items() if n in live.sagas
    }
    return {name: why for name, why in found.items() if why}


def compare(
    sagas: Iterable[SagaId],
    live: Mapping[SagaId, Decided],
    shadow: Mapping[SagaId, Decided],
    explain: Mapping[str, Explanation] | None = None,
) -> list[Difference]:
    """The sagas whose outcome or commands differ between the live run and the shadow, each
    marked explained when, seen through its saga's `Explanation`, nothing differs."""
    found = []
    for saga in sagas:
        was, now = live.get(saga, Decided()), shadow.get(saga, Decided())
        if was == now:
            continue
        why = (explain or {}).get(saga[0])
        seen = (was, now) if why is None else (why.live(was), why.shadow(now))
        explained = why is not None and seen[0] == seen[1]
        if explained:
            seen = (was, now)  # nothing to read: kept as they were
        # the steps as the shadow names them: a renamed step's commands under its new name
        steps = _step_differences(*seen)
        if seen[0].outcome == seen[1].outcome and not explained:
            outcome = None  # the same, once the diff's renames are taken into account
        else:
            outcome = None if was.outcome == now.outcome else _outcomes(was.outcome, now.outcome)
        found.append(Difference(saga[0], saga[1], outcome, steps, explained))
    return found


def _step_differences(was: Decided, now: Decided) -> tuple[tuple[str, str, str], ...]:
    return tuple(
        (step, _commands(was, step), _commands(now, step))
        for step in sorted({*was.commands, *now.commands})
        if was.commands.get(step) != now.commands.get(step)
    )


def headline(
    compared: int, differences: list[Difference], explain: Mapping[str, Explanation]
) -> str:
    """`30 sagas compared: 30 differ only as the diff says (order: shipping -> ship), 0 differ
    otherwise`; without anything to explain, `30 sagas compared, 2 differ`."""
    otherwise = sum(1 for d in differences if not d.explained)
    if not explain:
        return f"{compared} sagas compared, {otherwise} differ (live -> shadow)"
    says = "; ".join(f"{saga}: {why.text()}" for saga, why in explain.items())
    return (
        f"{compared} sagas compared: {len(differences) - otherwise} differ only as the diff "
        f"says ({says}), {otherwise} differ otherwise (live -> shadow)"
    )


def _commands(run: Decided, step: str) -> str:
    return " ".join(run.commands.get(step, [])) or "none"


def _outcomes(live: dict[str, Any] | None, shadow: dict[str, Any] | None) -> tuple[str, str]:
    """The two outcomes in short: type and reason, plus the fields that differ if that is all."""
    texts = [_outcome(live), _outcome(shadow)]
    if texts[0] == texts[1] and live is not None and shadow is not None:
        differ = sorted(k for k in {*live, *shadow} if live.get(k) != shadow.get(k))
        texts = [
            f"{text} ({', '.join(f'{k}={side.get(k)}' for k in differ)})"
            for text, side in zip(texts, (live, shadow), strict=True)
        ]
    return texts[0], texts[1]


def _outcome(outcome: dict[str, Any] | None) -> str:
    if outcome is None:
        return "no outcome"
    reason = outcome.get("reason")
    return f"{outcome['event_type']} ({reason})" if reason else str(outcome["event_type"])


# -- running it ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowOptions:
    topology_file: Path | None = None  # default: the live one
    saga: str | None = None  # default: every saga of the topology
    since_ms: int | None = None  # default: from the beginning of the inputs
    prefix: str | None = None  # default: shadow-<time>-
    keep: bool = False
    timeout_s: float = 600.0


def run_shadow(
    live: Settings, options: ShadowOptions, out: TextIO | None = None
) -> list[Difference]:
    """Replay the live inputs in a shadow, print what differs, and remove the shadow unless kept."""
    topology_file = options.topology_file or live.topology_file
    topology = load_topology(topology_file, live.schemas_path)
    live_topology = load_topology(live.topology_file, live.schemas_path)
    if options.saga is not None:
        if options.saga not in topology.sagas:
            raise UsageError(
                f"unknown saga {options.saga!r}: {topology_file} has {', '.join(topology.sagas)}"
            )
        topology = topology.model_copy(
            update={"sagas": {options.saga: topology.sagas[options.saga]}}
        )
    prefix = options.prefix or f"shadow-{time.strftime('%Y%m%d-%H%M%S')}-"
    shadow = shadow_settings(live, prefix, topology_file)
    group = shadow.group(ROLE)
    target = Target("beginning") if options.since_ms is None else Target("time", options.since_ms)
    since = "the beginning" if options.since_ms is None else target.describe()
    inputs = [shadow.input_topic(t) for t in topology.orchestrator_inputs()]
    committed, watermarks, times = read_offsets(shadow, group, inputs, None, target)
    until_ms = now_ms()
    if any(offset is not None for offset in committed.values()):
        raise ClusterError(f"consumer group {group} exists already: choose another --shadow-prefix")
    _check_partitions(shadow, topology, watermarks)
    explain = explanations(live_topology, topology)
    rows = plan_rows({}, watermarks, target, times)
    ranges = {(r.topic, r.partition): (r.new, r.high) for r in rows}
    total = sum(high - start for start, high in ranges.values())
    say = partial(print, file=out or sys.stdout, flush=True)
    say(
        f"shadow replay of {', '.join(topology.sagas)} with {topology_file}: {total} input records "
        f"of {len(inputs)} live topics, from {since} to their ends at {_utc(until_ms)}"
    )
    say(f"  shadow: group {group}, topics {shadow.topic_prefix}*")
    schemas = SchemaStore(live.schemas_path)
    try:
        create_topics(shadow, topology)
        commit_plan(shadow, group, rows)
        codec = build_codec(shadow, schemas)
        begun = _started(shadow, codec, topology, ranges)
        seen = _live_order(live, group, set(begun))
        started = time.monotonic()
        renames = {saga: why.renamed for saga, why in explain.items() if why.renamed}
        replayed, unanswered, dead = _replay(
            shadow, topology, schemas, codec, ranges, until_ms, seen, renames, options.timeout_s
        )
        say(
            f"  replayed {replayed} records in {time.monotonic() - started:.1f}s "
            "(event time: the records' timestamps; each saga's in its live order)"
        )
        if unanswered:
            say(f"  {unanswered} live results answer commands the shadow never sent")
        if dead:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dead.items()))
            say(f"  the shadow dead-lettered {sum(dead.values())} records ({reasons})")
        outputs = _output_topics([topology, live_topology], list(topology.sagas))
        was = [
            o
            for o in _read(live, codec, _ranges(live, group, map(live.topic, outputs), target))
            if o.record["meta"]["occurred_at"] <= until_ms
        ]
        mine = _ranges(shadow, group, map(shadow.topic, outputs), Target("beginning"))
        now = list(_read(shadow, codec, mine))
        keys = sorted((saga, key) for key, saga in begun.items())
        differences = compare(keys, decisions(was, begun), decisions(now, begun), explain)
    finally:
        if not options.keep:
            remove_shadow(shadow, topology, schemas)
    for difference in differences:
        if not difference.explained:
            say(difference.line())
    say(headline(len(keys), differences, explain))
    say(
        f"kept the shadow: topics {shadow.topic_prefix}*, consumer group {group}"
        if options.keep
        else "removed the shadow's topics, consumer group, state and schema subjects (--keep keeps them)"
    )
    return differences


def _check_partitions(
    shadow: Settings, topology: Topology, watermarks: Mapping[Partition, Any]
) -> None:
    for topic in {t for t, _ in watermarks}:
        have = sum(1 for t, _ in watermarks if t == topic)
        want = topology.partitions(logical_topic(shadow, topic))
        if have != want:
            raise UsageError(
                f"{topic} has {have} partitions, {shadow.topology_file} says {want}: the "
                "shadow must partition sagas as the live run did"
            )


def shadow_settings(live: Settings, prefix: str, topology_file: Path) -> Settings:
    """The shadow's settings: the live inputs, its own prefix (after the live one) for the rest."""
    if not prefix:
        raise UsageError("a shadow needs a prefix of its own for its topics")
    return live.model_copy(
        update={
            "topic_prefix": live.topic_prefix + prefix,
            "input_prefix": live.topic_prefix,
            "topology_file": topology_file,
            "schemas_dir": live.schemas_path,
        }
    )


def _replay(
    shadow: Settings,
    topology: Topology,
    schemas: SchemaStore,
    codec: AvroCodec,
    ranges: Mapping[Partition, tuple[int, int]],
    until_ms: int,
    seen: Mapping[bytes, list[str]],
    renames: Mapping[str, Mapping[str, str]],
    timeout: float,
) -> tuple[int, int, dict[str, int]]:
    """Run the shadow orchestrator (in this process) until it has decided its inputs: how many
    it decided, how many live results answered no command of its own, and how many it
    dead-lettered by reason."""
    metrics = Metrics.create("shadow")
    orchestrator = EventTimeOrchestrator(
        shadow, topology, schemas, codec, metrics, ranges, until_ms, seen, renames
    )
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            orchestrator.run(stop)
        except BaseException as exc:  # handed to the caller
            failed.append(exc)
            stop.set()

    thread = threading.Thread(target=run, name="shadow", daemon=True)
    # inputs of sagas started before the range are dead-lettered one by one: counted instead
    quiet = logging.getLogger("sagastream.orchestrator")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    thread.start()
    try:
        thread.join(timeout)
    finally:
        stop.set()
        thread.join(30)
        quiet.setLevel(level)
        orchestrator.instance.lock.close()
    if failed:
        raise failed[0]
    if not orchestrator.finished or thread.is_alive():
        raise TimeoutError(
            f"the shadow decided {orchestrator.replayed} of its inputs in {timeout:.0f}s and "
            "stopped; run it with a larger --timeout, or from a later --from-time"
        )
    dead: dict[str, int] = {}
    for sample in (s for family in metrics.dead_letters.collect() for s in family.samples):
        if sample.name.endswith("_total"):
            reason = sample.labels["reason"]
            dead[reason] = dead.get(reason, 0) + int(sample.value)
    return orchestrator.replayed, orchestrator.unanswered, dead


def _output_topics(topologies: list[Topology], sagas: list[str]) -> list[str]:
    """The logical topics of what the sagas' decisions produce: commands and outcomes."""
    kinds: set[str] = set(OUTCOME_EVENTS)
    for topology in topologies:
        for spec in (topology.sagas[s] for s in sagas if s in topology.sagas):
            for step in spec.steps.values():
                kinds.update(k for k in (step.command, step.escalation) if k)
                if step.compensation is not None:
                    kinds.add(step.compensation.command)
            if spec.notify is not None:
                kinds.add(spec.notify.command)
    return sorted({t.event_topic(k) for t in topologies for k in kinds if k in t.events})


def _started(
    shadow: Settings,
    codec: AvroCodec,
    topology: Topology,
    ranges: Mapping[Partition, tuple[int, int]],
) -> dict[str, str]:
    """The sagas whose start event the replay read: key -> saga type."""
    starts = {spec.start_event: name for name, spec in topology.sagas.items()}
    topics = {shadow.input_topic(topology.event_topic(e)) for e in starts}
    begun: dict[str, str] = {}
    for out in _read(shadow, codec, {tp: r for tp, r in ranges.items() if tp[0] in topics}):
        if out.event_type in starts:
            begun.setdefault(out.key, starts[out.event_type])
    return begun


def _live_order(live: Settings, group: str, keys: set[str]) -> dict[bytes, list[str]]:
    """The event ids' digests each of these sagas' live state has seen, in the order it decided them
    (its newest state in the live changelog; the last 64 events of a longer saga)."""
    wanted = {key.encode() for key in keys}
    states: dict[bytes, bytes | None] = {}
    ranges = _ranges(live, group, [live.changelog_topic()], Target("beginning"))
    for msg in _messages(live, ranges):
        if msg.key() in wanted:
            states[msg.key() or b""] = msg.value()
    return {key: decode_state(value).seen for key, value in states.items() if value}


def _ranges(
    settings: Settings, group: str, physical: Iterable[str], target: Target
) -> dict[Partition, tuple[int, int]]:
    """Offset ranges of those topics that exist, from the target to their ends now."""
    names = admin_client(settings).list_topics(timeout=10).topics
    topics = [p for p in physical if p in names]
    _, watermarks, times = read_offsets(settings, group, topics, None, target)
    return {
        (r.topic, r.partition): (r.new, r.high) for r in plan_rows({}, watermarks, target, times)
    }


def _read(
    settings: Settings, codec: AvroCodec, ranges: Mapping[Partition, tuple[int, int]]
) -> Iterator[Output]:
    """The decodable committed records of offset ranges (what does not decode is not ours)."""
    for msg in _messages(settings, ranges):
        try:
            event_type, record = codec.decode(msg.value() or b"")
        except DecodeError:
            continue
        key = (msg.key() or b"").decode(errors="replace")
        yield Output(
            msg.topic() or "", msg.partition() or 0, msg.offset() or 0, key, event_type, record
        )


def _messages(settings: Settings, ranges: Mapping[Partition, tuple[int, int]]) -> Iterator[Message]:
    """The committed records of offset ranges."""
    consumer = reader(settings, "sagastream-shadow")
    try:
        yield from read_ranges(consumer, ranges)
    finally:
        consumer.close()


def remove_shadow(shadow: Settings, topology: Topology, schemas: SchemaStore) -> None:
    """The shadow's topics, consumer group, stores and schema subjects."""
    delete_topics(shadow, shadow.topic_prefix)
    group = shadow.group(ROLE)
    admin = admin_client(shadow)  # held: a collected client never resolves its futures
    for attempt in range(20):  # a group that has just been left takes a moment to be empty
        try:
            admin.delete_consumer_groups([group], request_timeout=10)[group].result()
            break
        except Exception as exc:
            if "GROUP_ID_NOT_FOUND" in str(exc) or attempt == 19:
                break
            time.sleep(0.5)
    shutil.rmtree(shadow.data_dir / group, ignore_errors=True)
    if shadow.schema_registry_url:
        delete_subjects(Registry.for_settings(shadow), plan_subjects(topology, schemas, shadow))


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
