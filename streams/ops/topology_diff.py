"""`sagastream topology diff`: what a change of topology.yaml means for the sagas in flight.

Every change is classified as the schema registry classifies a schema change
(docs/versioning.md, "Compatibility classes"):

* safe: a policy (timeouts, retries, escalation, waits, deadline, retention, audit, hops, notify,
  the outcome topic) or anything outside the sagas; in-flight sagas on the same shape take it;
* version: the saga's shape changed (`sagastream.core.definition`): a new version, and sagas
  in flight finish on theirs;
* refused: a change no version can carry: a saga's start event or key field, a saga removed
  (its sagas in flight would have no orchestrator), an event type's topic, or a topic's
  partition count, under a saga that uses it.

Which parts of a saga are its shape is read from `shape_body` itself, so the classes agree with
the shape: the same shape has only safe changes, another shape has at least one version or
refused change. Pure: two Topology (or SagaSpec) objects in, findings out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sagastream.core.definition import shape_json
from sagastream.core.topology import (
    ATTEMPT_FAILED_EVENT,
    SIGNAL_EVENT,
    SagaSpec,
    Topology,
    saga_event_types,
)
from sagastream.errors import UsageError

Change = Literal["safe", "version", "refused"]
CLASSES: tuple[Change, ...] = ("safe", "version", "refused")
DEFAULT_ALLOW: tuple[Change, ...] = ("safe", "version")
# a saga's own fields that are its identity: changing one needs a new saga name
IDENTITY = ("start_event", "key_field")
SCHEMAS_NOTE = (
    "Avro schemas are not compared here: a schema change is the registry's business "
    "(`sagastream schemas compat` checks them against it)"
)


@dataclass(frozen=True)
class Finding:
    """One change: where (a dotted path as in topology.yaml), what, and its class."""

    where: str
    what: str
    change: Change

    def __str__(self) -> str:
        return f"{self.where}: {self.what}: {self.change}"

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "what": self.what, "class": self.change}


@dataclass(frozen=True)
class SagaDiff:
    """One saga's changes, with its shape before and after (None: no such saga on that side)."""

    saga: str
    old_shape: str | None
    new_shape: str | None
    findings: tuple[Finding, ...]

    @property
    def change(self) -> Change | None:
        """The most severe class among its findings; None: nothing changed."""
        return _worst(self.findings)

    def headline(self) -> str:
        """`order: shape 1a2b.. -> 3c4d..: version`, or unchanged."""
        shapes = f"shape {self.old_shape or '(none)'}"
        if self.new_shape != self.old_shape:
            shapes += f" -> {self.new_shape or '(none)'}"
        return f"{self.saga}: {shapes}: {self.change or 'unchanged'}"


@dataclass(frozen=True)
class TopologyDiff:
    """Every saga's changes, then those of the events, topics and the rest of the file."""

    sagas: tuple[SagaDiff, ...]
    others: tuple[Finding, ...]

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.sagas for f in s.findings] + list(self.others)

    def not_allowed(self, allow: tuple[Change, ...]) -> list[Finding]:
        """The findings whose class `allow` does not list: why CI should fail."""
        return [f for f in self.findings if f.change not in allow]

    def lines(self) -> list[str]:
        """The report an operator reads: per saga its headline and changes, then the rest."""
        out: list[str] = []
        for saga in self.sagas:
            out.append(saga.headline())
            out += [f"  {f}" for f in saga.findings]
        if self.others:
            out.append(f"outside the sagas: {_worst(self.others)}")
            out += [f"  {f}" for f in self.others]
        return out

    def to_dict(self, allow: tuple[Change, ...]) -> dict[str, Any]:
        return {
            "sagas": [
                {
                    "saga": s.saga,
                    "old_shape": s.old_shape,
                    "new_shape": s.new_shape,
                    "class": s.change,
                    "findings": [f.to_dict() for f in s.findings],
                }
                for s in self.sagas
            ],
            "others": [f.to_dict() for f in self.others],
            "allow": list(allow),
            "not_allowed": [f.to_dict() for f in self.not_allowed(allow)],
            "note": SCHEMAS_NOTE,
        }


def parse_allow(text: str) -> tuple[Change, ...]:
    """`safe,version` -> the classes; an unknown name is a usage error naming the known ones."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CLASSES]
    if unknown or not names:
        raise UsageError(
            f"--allow {text!r}: {', '.join(unknown) or 'no class'} is not a change class; "
            f"give a comma list of {', '.join(CLASSES)}"
        )
    return tuple(c for c in CLASSES if c in names)


def diff_topologies(old: Topology, new: Topology) -> TopologyDiff:
    """Every change from `old` to `new`, per saga (old's order, then new sagas), then the rest."""
    names = [*old.sagas, *(n for n in new.sagas if n not in old.sagas)]
    sagas = tuple(diff_sagas(n, old.sagas.get(n), new.sagas.get(n)) for n in names)
    others = _events(old, new) + _topics(old, new) + _rest(old, new)
    return TopologyDiff(sagas, tuple(others))


def diff_sagas(name: str, old: SagaSpec | None, new: SagaSpec | None) -> SagaDiff:
    """One saga's changes (either side may be absent: a saga added or removed)."""
    if old is None or new is None:
        shapes = (None if old is None else old.shape), (None if new is None else new.shape)
        return SagaDiff(name, *shapes, (_added_or_removed(name, new),))
    findings = _identity(name, old, new)
    bodies = _shape(old), _shape(new)
    policies = _policies(old, bodies[0]), _policies(new, bodies[1])
    findings += _changes(name, policies[0]["saga"], policies[1]["saga"], "safe")
    findings += _steps(name, new, bodies, policies)
    return SagaDiff(name, old.shape, new.shape, tuple(findings))


def _steps(
    name: str,
    new: SagaSpec,
    bodies: tuple[dict[str, Any], dict[str, Any]],
    policies: tuple[dict[str, Any], dict[str, Any]],
) -> list[Finding]:
    """Steps kept (and how they changed), renamed, removed, then added, in file order."""
    old_steps, new_steps = bodies[0]["steps"], bodies[1]["steps"]
    renamed = _renames(old_steps, new_steps)
    findings: list[Finding] = []
    for step in old_steps:
        if step in new_steps or step in renamed:
            if step in renamed:
                findings.append(_renamed(name, step, renamed[step], old_steps[step]["command"]))
            findings += _step_changes(name, step, renamed.get(step, step), bodies, policies)
        else:
            what = "removed: sagas in flight on the old shape keep it and finish on their version"
            findings.append(Finding(f"{name}.steps.{step}", what, "version"))
    gained = set(renamed.values())
    for step in new_steps:
        if step not in old_steps and step not in gained:
            findings.append(Finding(f"{name}.steps.{step}", _added_step(new, step), "version"))
    return findings


def _added_or_removed(name: str, new: SagaSpec | None) -> Finding:
    if new is not None:
        return Finding(name, "a new saga: none of it is in flight", "safe")
    return Finding(
        name,
        "removed: its sagas in flight would be left with no orchestrator; remove it once "
        "`sagastream topology versions` shows none running, and allow `refused` for that change",
        "refused",
    )


def _identity(name: str, old: SagaSpec, new: SagaSpec) -> list[Finding]:
    """Start event and key: what finds a saga's state; changing one makes another saga."""
    out = []
    for field in IDENTITY:
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            out.append(
                Finding(
                    f"{name}.{field}",
                    f"{before} -> {after}: sagas in flight were started and keyed by "
                    f"{before}; give the changed saga a new name instead",
                    "refused",
                )
            )
    return out


def _shape(spec: SagaSpec) -> dict[str, Any]:
    """The shape as plain JSON, exactly as the identity hashes it."""
    body: dict[str, Any] = json.loads(shape_json(spec))
    return body


def _policies(spec: SagaSpec, shape: dict[str, Any]) -> dict[str, Any]:
    """Everything of the saga that is not its shape: the saga's own policies, and per step its
    policies and its compensation's (the keys the shape has are left out)."""
    dump = spec.model_dump(mode="json")
    saga = {k: v for k, v in dump.items() if k not in shape}
    steps: dict[str, Any] = {}
    for name, step in dump["steps"].items():
        kept = shape["steps"][name]
        steps[name] = {k: v for k, v in step.items() if k not in kept}
        comp, comp_shape = step.get("compensation"), kept.get("compensation")
        if comp is not None and comp_shape is not None:
            steps[name]["compensation"] = {k: v for k, v in comp.items() if k not in comp_shape}
    return {"saga": saga, "steps": steps}


def renamed_steps(old: SagaSpec, new: SagaSpec) -> dict[str, str]:
    """The steps of `old` that `new` likely renames (old name -> new name), as the diff says."""
    return _renames(_shape(old)["steps"], _shape(new)["steps"])


def _renames(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    """Removed steps whose command one added step alone sends too: likely renames (old -> new)."""
    removed = [s for s in old if s not in new and old[s]["command"]]
    added = [s for s in new if s not in old and new[s]["command"]]
    pairs = {}
    for step in removed:
        same = [a for a in added if new[a]["command"] == old[step]["command"]]
        twins = [r for r in removed if old[r]["command"] == old[step]["command"]]
        if len(same) == 1 and len(twins) == 1:
            pairs[step] = same[0]
    return pairs


def _renamed(name: str, old_step: str, new_step: str, command: str) -> Finding:
    return Finding(
        f"{name}.steps.{old_step}",
        f"renamed to {new_step}? no: removed, and {new_step} added with the same command "
        f"({command}); sagas in flight keep {old_step} (`saga migrate --map "
        f"{old_step}={new_step}` moves them)",
        "version",
    )


def _step_changes(
    name: str,
    old_step: str,
    new_step: str,
    bodies: tuple[dict[str, Any], dict[str, Any]],
    policies: tuple[dict[str, Any], dict[str, Any]],
) -> list[Finding]:
    """A step's shape changes (version), then its policy changes (safe), at its new name."""
    where = f"{name}.steps.{new_step}"
    old_shape, new_shape = bodies[0]["steps"][old_step], bodies[1]["steps"][new_step]
    old_policy, new_policy = policies[0]["steps"][old_step], policies[1]["steps"][new_step]
    if old_shape["compensation"] is None or new_shape["compensation"] is None:
        # a compensation added or removed is a version, said once, not once per policy
        old_policy = {k: v for k, v in old_policy.items() if k != "compensation"}
        new_policy = {k: v for k, v in new_policy.items() if k != "compensation"}
    return _changes(where, old_shape, new_shape, "version") + _changes(
        where, old_policy, new_policy, "safe"
    )


def _added_step(spec: SagaSpec, step: str) -> str:
    s = spec.steps[step]
    what = "a person's decision" if s.human else f"command {s.command}"
    after = f", after {', '.join(s.depends_on)}" if s.depends_on else ""
    return f"added ({what}{after}): sagas in flight on the old shape do not run it"


def _changes(where: str, old: Any, new: Any, change: Change) -> list[Finding]:
    """Every difference between two JSON values, as findings of one class: dicts key by key
    (recursively), anything else as a whole."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Finding] = []
        for key in [*old, *(k for k in new if k not in old)]:
            path = f"{where}.{key}"
            if key not in new:
                out.append(Finding(path, f"removed (was {_text(old[key])})", change))
            elif key not in old:
                out.append(Finding(path, f"added: {_text(new[key])}", change))
            else:
                out += _changes(path, old[key], new[key], change)
        return out
    if isinstance(old, dict) and new is None:
        return [Finding(where, f"removed (was {_text(old)})", change)]
    if old is None and isinstance(new, dict):
        return [Finding(where, f"added: {_text(new)}", change)]
    return [Finding(where, f"{_text(old)} -> {_text(new)}", change)]


def _text(value: Any) -> str:
    """A value as an operator reads it in YAML flow style: no quotes unless needed."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value or "''"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _users(topology: Topology) -> dict[str, list[str]]:
    """Per event type, the sagas that send or read it (signals: those with a human step)."""
    users: dict[str, list[str]] = {}
    for saga, spec in topology.sagas.items():
        events = saga_event_types(spec)
        if any(step.human for step in spec.steps.values()):
            events.append(SIGNAL_EVENT)
        for event in dict.fromkeys(events):
            users.setdefault(event, []).append(saga)
    return users


def _events(old: Topology, new: Topology) -> list[Finding]:
    """An event type's topics under a saga in flight: refused (its results would be read, or
    its commands sent, elsewhere than where they are); anything else about events is safe."""
    users = _users(old)
    out: list[Finding] = []
    for event, spec in old.events.items():
        where = f"events.{event}"
        if event not in new.events:
            out.append(Finding(where, "removed", "safe"))
            continue
        after = new.events[event]
        if event == ATTEMPT_FAILED_EVENT and spec.all_topics != after.all_topics:
            what = "topics follow the handler roles that run steps (sagastream derives them)"
            out.append(Finding(f"{where}.topics", what, "safe"))
        elif spec.all_topics != after.all_topics:
            topics = f"{_text(list(spec.all_topics))} -> {_text(list(after.all_topics))}"
            sagas = users.get(event)
            if sagas:
                why = (
                    f"{topics} while saga {', '.join(sagas)} uses it: sagas in flight would "
                    "miss what is on the old topics; add a new event type instead"
                )
                out.append(Finding(f"{where}.topic", why, "refused"))
            else:
                out.append(Finding(f"{where}.topic", f"{topics} (no saga uses it)", "safe"))
        if spec.schema_name != after.schema_name:
            what = f"{spec.schema_name} -> {after.schema_name} (the registry checks schemas)"
            out.append(Finding(f"{where}.schema", what, "safe"))
    out += [Finding(f"events.{e}", "added", "safe") for e in new.events if e not in old.events]
    return out


def _topics(old: Topology, new: Topology) -> list[Finding]:
    """A topic's partition count under a saga: refused (keys would hash to other partitions,
    away from their sagas' state); its other settings, and topics added or removed, are safe."""
    in_use = {t for saga in old.sagas for t in old.saga_topics(saga)}
    out: list[Finding] = []
    for topic in old.topic_map:
        where = f"topics.{topic}"
        if topic not in new.topic_map:
            out.append(Finding(where, "removed", "safe"))
            continue
        before, after = old.partitions(topic), new.partitions(topic)
        if before != after:
            refused = topic in in_use
            why = (
                ": a saga uses it, and its keys would hash to other partitions, away from their "
                "sagas' state (`topics create` leaves an existing topic as it is)"
                if refused
                else ""
            )
            change: Change = "refused" if refused else "safe"
            out.append(Finding(f"{where}.partitions", f"{before} -> {after}{why}", change))
        old_conf = old.topic_map[topic].model_dump(mode="json", exclude={"partitions"})
        new_conf = new.topic_map[topic].model_dump(mode="json", exclude={"partitions"})
        out += _changes(where, old_conf, new_conf, "safe")
    out += [
        Finding(f"topics.{t}", "added", "safe") for t in new.topic_map if t not in old.topic_map
    ]
    return out


def _rest(old: Topology, new: Topology) -> list[Finding]:
    """The app, handler roles, defaults and registry levels: deployment, no saga's business
    (a default partition count shows at each topic it changes)."""
    fields = {"app", "defaults", "handlers", "schema_registry"}
    before, after = (
        old.model_dump(mode="json", include=fields),
        new.model_dump(mode="json", include=fields),
    )
    return [
        f for field in sorted(fields) for f in _changes(field, before[field], after[field], "safe")
    ]


def _worst(findings: tuple[Finding, ...]) -> Change | None:
    classes = {f.change for f in findings}
    return next((c for c in reversed(CLASSES) if c in classes), None)


def refused_against(deployed: Mapping[str, SagaSpec], new: Topology) -> list[Finding]:
    """The refused changes of `new`'s sagas from each one's newest deployed version (`deployed`):
    what no orchestrator may start on, nor `topics create` publish, unless allowed. A saga the
    file drops is not among them: whether that is refused depends on its running instances,
    which `topology check` counts from the changelog."""
    return [
        finding
        for name, spec in new.sagas.items()
        if name in deployed and deployed[name].shape != spec.shape
        for finding in diff_sagas(name, deployed[name], spec).findings
        if finding.change == "refused"
    ]


def check_deployed(
    deployed: Mapping[str, SagaSpec], running: Mapping[str, int], new: Topology
) -> TopologyDiff:
    """`topology check`: the file against what is deployed, per saga its newest published
    version (`deployed`). A saga the file drops is refused while instances of it run
    (`running`, by saga) and safe once none does: nothing would decide them."""
    names = [*deployed, *(n for n in new.sagas if n not in deployed)]
    sagas = []
    for name in names:
        if name in new.sagas or running.get(name, 0) == 0:
            diff = diff_sagas(name, deployed.get(name), new.sagas.get(name))
            if name not in new.sagas:  # retired: no instance left for anyone to decide
                diff = SagaDiff(
                    name,
                    diff.old_shape,
                    None,
                    (Finding(name, "removed; no instance of it runs", "safe"),),
                )
            sagas.append(diff)
            continue
        removed = Finding(
            name,
            f"removed while {running[name]} instances of it run: an orchestrator of this file "
            "would decide none of them; let them drain first (`sagastream topology versions`)",
            "refused",
        )
        sagas.append(SagaDiff(name, deployed[name].shape, None, (removed,)))
    return TopologyDiff(tuple(sagas), ())
