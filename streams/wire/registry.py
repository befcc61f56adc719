"""sagastream's side of a Confluent-compatible schema registry: subjects, register, check, ids.

Subjects follow Confluent's TopicRecordNameStrategy, ``<topic>-<record full name>`` (e.g.
``orders.events-sagastream.OrderPlaced``), with the physical topic (settings' prefix
applied): one topic carries several event types, each evolving on its own, and an event
type declared on several topics has a subject per topic. Schemas are sent as the
self-contained canonical JSON of ``SchemaStore.canonical`` so the same schema is always
the same text (Apicurio compares text). Compatibility is ``schema_registry.compatibility``
of topology.yaml (BACKWARD by default), overridden per ``<logical topic>-<record>``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from sagastream.core.topology import Topology, load_topology
from sagastream.errors import NotFound, SagastreamError, UsageError
from sagastream.runtime.settings import Settings, redact_url
from sagastream.wire.codec import (
    AvroCodec,
    DecodeError,
    LocalSchemaIds,
    RegistryRefused,
    RegistryUnavailable,
    SchemaStore,
)

with warnings.catch_warnings():
    # the client imports authlib, which warns about httpx on import; authlib.deprecate
    # turns its own warnings on when imported, so import it first, then silence them
    import authlib.deprecate  # noqa: F401

    warnings.simplefilter("ignore")
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

log = logging.getLogger("sagastream.registry")

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0
# After a failed request the codec's ids ask again no sooner than this (doubling from
# RETRY_INITIAL_S): a batch of inputs, or a timer tick, costs one request, not one each.
ASK_AGAIN_MAX_S = 2.0
# A record that suggests the ids changed brings the next check forward, but no closer than
# this to the previous one: a stream of bad records must not become a stream of lookups.
SUSPECT_MIN_GAP_S = 5.0
# An unknown id is remembered this long, so a burst of bad messages costs one request.
UNKNOWN_ID_TTL_S = 30.0
_UNKNOWN_IDS_MAX = 1024
_CONCURRENT_REQUESTS = 8
# 40401 subject, 40402 version, 40403 schema (Confluent, Apicurio), 40408 no subject-level
# compatibility (Confluent), 40400 (confluent-kafka's mock client)
_NOT_FOUND_CODES = frozenset({40400, 40401, 40402, 40403, 40408})

T = TypeVar("T")


def subject_name(topic: str, record: str) -> str:
    """TopicRecordNameStrategy: ``<topic>-<record full name>``."""
    return f"{topic}-{record}"


def retry_delay(failures: int) -> float:
    """Seconds to wait after `failures` failed registry attempts: 0.5 s doubling, at most 30 s."""
    return min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** min(failures, 16))


@dataclass(frozen=True)
class Subject:
    """One subject to register: an event type's schema on one topic."""

    name: str
    topic: str
    event_type: str
    record: str
    compatibility: str
    schema: str


def plan_subjects(topology: Topology, store: SchemaStore, settings: Settings) -> list[Subject]:
    """Every subject of the topology's events, sorted by name, with its compatibility level."""
    spec = topology.schema_registry
    subjects: list[Subject] = []
    for event_type, event in topology.events.items():
        record = store.fullname(event.schema_name)
        text = store.canonical(event.schema_name)
        for topic in event.all_topics:
            level = spec.overrides.get(subject_name(topic, record), spec.compatibility)
            subjects.append(
                Subject(
                    subject_name(settings.topic(topic), record),
                    topic,
                    event_type,
                    record,
                    level,
                    text,
                )
            )
    logical = {subject_name(s.topic, s.record) for s in subjects}
    unknown = sorted(set(spec.overrides) - logical)
    if unknown:
        example = min(logical)
        raise UsageError(
            f"{settings.topology_file}: schema_registry.overrides: {', '.join(unknown)} "
            f"names no subject; keys are <logical topic>-<record full name>, e.g. {example}"
        )
    return sorted(subjects, key=lambda s: s.name)


@dataclass(frozen=True)
class Registered:
    schema_id: int
    version: int | None


class SchemaRejected(SagastreamError, ValueError):
    """The registry refused a schema (incompatible with the subject, or not valid Avro)."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"registry refused the schema for {subject}: {reason}")
        self.subject = subject
        self.reason = reason


class Registry:
    """The registry calls sagastream makes, with errors mapped to what callers act on.

    Unreachable, timing out, throttling or failing (5xx) raises RegistryUnavailable;
    refusing the credentials (401/403) raises RegistryRefused, and `refused` says why until
    a request succeeds again. "Not found" answers become None. The client does not retry
    or sleep (callers back off without blocking), and caches schemas by id and lookups.
    """

    def __init__(
        self,
        url: str,
        *,
        client: Any = None,
        timeout: float = 5.0,
        conf: dict[str, Any] | None = None,
    ) -> None:
        """`conf`: the client's credentials and TLS (Settings.schema_registry_config)."""
        self.url = redact_url(url)  # what messages and logs show: never credentials
        self._client = client or SchemaRegistryClient.new_client(
            {**(conf or {}), "url": url, "max.retries": 0, "timeout": timeout}
        )
        self._addressed = False
        self.refused: str | None = None

    @classmethod
    def for_settings(cls, settings: Settings, url: str | None = None) -> Registry:
        """The registry of these settings (or at `url`), with their credentials and TLS."""
        target = url or settings.schema_registry_url
        if not target:
            raise UsageError("no schema registry: set SAGASTREAM_SCHEMA_REGISTRY_URL")
        return cls(target, conf=settings.schema_registry_config())

    def forget_cached(self) -> None:
        """Drop what the client cached (schemas by id, lookups): the next calls ask the
        registry, which may have lost or renumbered what was cached."""
        self._client.clear_caches()

    def schema(self, schema_id: int) -> Schema | None:
        """The schema with this id; None if the registry says it has none.

        Any refusal of the id (a 4xx other than credentials and throttling, which raise
        RegistryUnavailable) means none: Apicurio, for one, answers an id it cannot parse
        with a 404 of error code 0. A wrong URL path earns the same answer, so such a
        refusal counts only once the URL has been seen to lead to a registry API.
        """
        try:
            return self._call(self._client.get_schema, schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code in _NOT_FOUND_CODES:
                return None
            if 400 <= exc.http_status_code < 500 and self._is_registry_api():
                return None
            raise RegistryUnavailable(
                f"schema registry at {self.url} answered {exc} for schema id {schema_id}; "
                "check SAGASTREAM_SCHEMA_REGISTRY_URL (it ends in the API path, e.g. "
                "/apis/ccompat/v7 for Apicurio)"
            ) from exc

    def _is_registry_api(self) -> bool:
        """Whether the URL answers as a registry API (lists schema types); kept once true."""
        if not self._addressed:
            try:
                self._call(self._client.get_schema_types)
            except SchemaRegistryError:
                return False
            self._addressed = True
        return True

    def lookup(self, subject: str, text: str) -> tuple[Registered | None, bool]:
        """This exact text's id and version under the subject, and whether the subject exists."""
        try:
            found = self._call(self._client.lookup_schema, subject, Schema(text, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404 or exc.error_code not in _NOT_FOUND_CODES:
                raise
            if exc.error_code == 40401:
                return None, False
            if exc.error_code == 40403:
                return None, True
            return None, self.latest(subject) is not None  # an answer that does not say which
        return Registered(found.schema_id, found.version), True

    def latest(self, subject: str) -> tuple[Registered, str] | None:
        """The subject's latest version and its schema text; None for an unknown subject."""
        found = self._maybe(self._client.get_latest_version, subject)
        if found is None:
            return None
        return Registered(found.schema_id, found.version), found.schema.schema_str

    def register(self, subject: str, text: str) -> int:
        """Register the schema under the subject (same text: same id); SchemaRejected if refused."""
        try:
            return int(self._call(self._client.register_schema, subject, Schema(text, "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code in (409, 422):
                raise SchemaRejected(subject, exc.error_message) from exc
            raise

    def compatibility(self, subject: str) -> str | None:
        """The subject's own compatibility level; None when it has none (or does not exist)."""
        level = self._maybe(self._client.get_compatibility, subject)
        return None if level is None else str(level)

    def set_compatibility(self, subject: str, level: str) -> None:
        self._call(self._client.set_compatibility, subject, level)

    def delete(self, subject: str) -> None:
        """Delete the subject for good (soft, then permanent, as both registries require)."""
        if self._maybe(self._client.delete_subject, subject) is not None:
            self._maybe(self._client.delete_subject, subject, True)

    def compatible(self, subject: str, text: str) -> tuple[bool, str]:
        """Whether the registry accepts the schema as the subject's next version, and why not."""
        schema = Schema(text, "AVRO")
        if self._call(self._client.test_compatibility, subject, schema):
            return True, ""
        return False, self._incompatibility_reason(subject, schema)

    def _incompatibility_reason(self, subject: str, schema: Schema) -> str:
        # test_compatibility drops the verbose answer; ask for it directly. The reason is a
        # courtesy: without it the verdict still stands.
        try:
            answer = self._client._rest_client.post(
                f"compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true",
                body=schema.to_dict(),
            )
        except Exception:
            return ""
        reasons = answer.get("messages") or answer.get("reason") or ""
        return "; ".join(reasons) if isinstance(reasons, list) else str(reasons)

    def _maybe(self, call: Callable[..., T], *args: Any) -> T | None:
        try:
            return self._call(call, *args)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code in _NOT_FOUND_CODES:
                return None
            raise

    def _call(self, call: Callable[..., T], *args: Any) -> T:
        try:
            answer = call(*args)
        except (httpx.TransportError, OSError) as exc:
            raise RegistryUnavailable(
                f"schema registry at {self.url} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500 or exc.http_status_code in (408, 429):
                raise RegistryUnavailable(f"schema registry at {self.url} failed: {exc}") from exc
            if exc.http_status_code in (401, 403):
                if self.refused is None:
                    log.error(
                        "schema registry at %s refused the credentials (%s): a configuration "
                        "error, not an outage (a worker stops if so at its start; a running one "
                        "keeps its inputs waiting until it accepts them). Check the registry's "
                        "user and password, or its ACLs",
                        self.url,
                        exc,
                    )
                self.refused = f"schema registry at {self.url} refused the credentials: {exc}"
                raise RegistryRefused(self.refused) from exc
            raise
        self.refused = None
        return answer


# ------------------------------------------------------------------ register and check

Action = Literal[
    "registered", "new version", "unchanged", "rejected", "new", "compatible", "incompatible"
]


@dataclass(frozen=True)
class Outcome:
    """What `schemas register` did, or `schemas check` found, for one subject."""

    subject: Subject
    action: Action
    schema_id: int | None = None
    version: int | None = None
    level_was: str | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.action in ("rejected", "incompatible")


def register_subjects(registry: Registry, subjects: Iterable[Subject]) -> list[Outcome]:
    """Register every subject and set its compatibility; a second run changes nothing.

    The level is set before a new version is registered, so the registry checks the
    version against the level topology.yaml asks for.
    """

    def register(subject: Subject) -> Outcome:
        found, exists = registry.lookup(subject.name, subject.schema)
        level = registry.compatibility(subject.name) if exists else subject.compatibility
        if level != subject.compatibility or not exists:
            registry.set_compatibility(subject.name, subject.compatibility)
        was = None if level == subject.compatibility else (level or "unset")
        if found is not None:
            return Outcome(subject, "unchanged", found.schema_id, found.version, was)
        try:
            schema_id = registry.register(subject.name, subject.schema)
        except SchemaRejected as exc:
            return Outcome(subject, "rejected", level_was=was, detail=exc.reason)
        if not exists:
            return Outcome(subject, "registered", schema_id, 1)
        now, _ = registry.lookup(subject.name, subject.schema)
        version = None if now is None else now.version
        return Outcome(subject, "new version", schema_id, version, was)

    return _per_subject(subjects, register)


def check_subjects(registry: Registry, subjects: Iterable[Subject]) -> list[Outcome]:
    """Compare local schemas with the registry without changing it."""

    def check(subject: Subject) -> Outcome:
        found, exists = registry.lookup(subject.name, subject.schema)
        if not exists:
            return Outcome(subject, "new")
        level = registry.compatibility(subject.name)
        differs = None if level == subject.compatibility else (level or "unset")
        if found is not None:
            return Outcome(subject, "unchanged", found.schema_id, found.version, differs)
        latest = registry.latest(subject.name)
        version = None if latest is None else latest[0].version
        ok, reason = registry.compatible(subject.name, subject.schema)
        kind: Action = "compatible" if ok else "incompatible"
        return Outcome(subject, kind, None, version, differs, reason)

    return _per_subject(subjects, check)


def delete_subjects(registry: Registry, subjects: Iterable[Subject]) -> None:
    """Delete the subjects for good, concurrently (demo and test clean-up)."""
    delete_subject_names(registry, [subject.name for subject in subjects])


def delete_subject_names(registry: Registry, names: Iterable[str]) -> None:
    """Delete the subjects of these names for good, concurrently."""
    with ThreadPoolExecutor(max_workers=_CONCURRENT_REQUESTS) as pool:
        list(pool.map(registry.delete, names))


def _per_subject(subjects: Iterable[Subject], work: Callable[[Subject], Outcome]) -> list[Outcome]:
    """work(subject) for every subject, concurrently, in the subjects' order.

    Subjects with the same schema text (one event on several topics) go one after the
    other: a registry may race when it stores the same new content twice at once.
    """
    ordered = list(subjects)
    groups: dict[str, list[Subject]] = {}
    for subject in ordered:
        groups.setdefault(subject.schema, []).append(subject)
    with ThreadPoolExecutor(max_workers=_CONCURRENT_REQUESTS) as pool:
        done = pool.map(lambda group: [work(s) for s in group], groups.values())
        by_name = {o.subject.name: o for outcomes in done for o in outcomes}
    return [by_name[s.name] for s in ordered]


def report(outcomes: list[Outcome], checking: bool) -> list[str]:
    """Human-readable lines, one per subject, then a summary."""
    lines: list[str] = []
    width = max((len(o.subject.name) for o in outcomes), default=0)
    for o in outcomes:
        where = f"{o.subject.name:<{width}}"
        ids = f"id {o.schema_id} v{o.version}" if o.schema_id is not None else ""
        level = o.subject.compatibility
        if o.level_was is not None:
            level += f" (registry has {o.level_was})" if checking else f" (was {o.level_was})"
        if o.action == "unchanged":
            what = "registered" if checking else "unchanged"
            text = f"{what:<12} {where}  {ids}  {level}"
        elif o.action in ("registered", "new version"):
            text = f"{o.action:<12} {where}  {ids}  {level}"
        elif o.action == "new":
            text = f"{'new':<12} {where}  not in the registry yet  {level}"
        elif o.action == "compatible":
            text = f"{'compatible':<12} {where}  change accepted after v{o.version} under {level}"
        else:
            label = "INCOMPATIBLE" if o.action == "incompatible" else "REJECTED"
            after = f" with v{o.version}" if o.version is not None else ""
            text = f"{label:<12} {where}  incompatible{after} under {level}: {o.detail}"
        lines.append("  " + text.rstrip())
    counts: dict[str, int] = {}
    for o in outcomes:
        key = "registered" if checking and o.action == "unchanged" else o.action
        counts[key] = counts.get(key, 0) + 1
    lines.append(", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "no subjects")
    return lines


# ---------------------------------------------------------------------- codec ids


class RegistrySchemaIds:
    """SchemaIds from the registry: register-or-lookup per event type, fetch by id; all cached.

    A producer's id comes from the subject of the event's (first) topic; registries give
    the same schema text the same id under every subject. Unknown ids are remembered for
    UNKNOWN_ID_TTL_S. After a failed request nothing is asked again for a short backoff
    (doubling up to ASK_AGAIN_MAX_S), so while the registry is down inputs and timers wait
    without a request each.

    A registry can lose its ids (one with in-memory storage, restarted) and give the same
    numbers to other schemas. So the producer ids are looked up again every
    `schema_ids_recheck_s`, and sooner when a consumed record suggests it (`suspect`): the
    same lookup-or-register that found them re-registers them in a registry that forgot
    them. When any id moved, `renumbered` answers True once, as Confluent's serializers
    re-resolve on a subject's change. Schemas fetched by id stay cached: the codec checks
    every record's type against its id's and asks again (`forget_schema`) when they differ.

    The handler roles of one worker share it from their threads: what asks the registry
    holds a lock (a cache hit does not).
    """

    def __init__(
        self,
        store: SchemaStore,
        settings: Settings,
        *,
        topology: Topology | None = None,
        registry: Registry | None = None,
    ) -> None:
        if registry is None and not settings.schema_registry_url:
            raise UsageError("RegistrySchemaIds needs SAGASTREAM_SCHEMA_REGISTRY_URL")
        self._store = store
        self._settings = settings
        self._topology = topology or load_topology(settings.topology_file, store.directory)
        self._registry = registry or Registry.for_settings(settings)
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._unknown: dict[int, float] = {}
        self._failures = 0
        self._ask_at = 0.0
        self._last_error: tuple[type[RegistryUnavailable], str] = (RegistryUnavailable, "")
        self._checked = time.monotonic()
        self._check_at = self._checked + settings.schema_ids_recheck_s
        self._lock = threading.RLock()

    @property
    def config_error(self) -> str | None:
        """Why the registry refuses this worker (credentials), while it does; else None."""
        return self._registry.refused

    def id_for(self, event_type: str) -> int:
        cached = self._ids.get(event_type)
        if cached is not None:
            return cached
        with self._lock:
            schema_id = self._ask(self._resolve, event_type)
            self._ids[event_type] = schema_id
            return schema_id

    def _resolve(self, event_type: str) -> int:
        """The registry's id for the event type's schema, registering it if it has none."""
        event = self._topology.events.get(event_type)
        if event is None:
            raise NotFound(
                f"event type {event_type!r} is not declared in {self._settings.topology_file}, "
                "so it has no topic and no subject"
            )
        text = self._store.canonical(event.schema_name)
        topic = self._settings.topic(event.all_topics[0])
        subject = subject_name(topic, self._store.fullname(event.schema_name))
        try:
            found, _ = self._registry.lookup(subject, text)
            schema_id = found.schema_id if found else self._registry.register(subject, text)
        except SchemaRejected as exc:
            raise NotFound(f"{exc}; run `sagastream schemas check`") from None
        except SchemaRegistryError as exc:
            # e.g. a RESTEasy 404 for a URL without /apis/ccompat/v7: waiting beats dead-lettering
            raise RegistryUnavailable(
                f"schema registry at {self._registry.url} answered {exc} for {subject}; "
                "check SAGASTREAM_SCHEMA_REGISTRY_URL"
            ) from exc
        self._schemas[schema_id] = json.loads(text)
        return schema_id

    def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        seen = self._unknown.get(schema_id)
        if seen is not None and time.monotonic() - seen < UNKNOWN_ID_TTL_S:
            return None
        with self._lock:
            schema = self._ask(self._registry.schema, schema_id)
            if schema is None:
                if len(self._unknown) >= _UNKNOWN_IDS_MAX:
                    self._unknown.clear()
                self._unknown[schema_id] = time.monotonic()
                return None
        parsed = _record_schema(schema)
        if parsed is None:
            raise DecodeError(
                "unknown_schema_id",
                f"schema id {schema_id} is a {schema.schema_type or 'AVRO'} schema that is not "
                "a self-contained Avro record",
                schema_id=schema_id,
            )
        self._schemas[schema_id] = parsed
        return parsed

    def forget_schema(self, schema_id: int) -> None:
        with self._lock:
            self._schemas.pop(schema_id, None)
            self._unknown.pop(schema_id, None)
            self._registry.forget_cached()  # it keeps schemas by id too; ours stay cached

    def suspect(self) -> None:
        self._check_at = min(self._check_at, self._checked + SUSPECT_MIN_GAP_S)

    def renumbered(self) -> bool:
        """Look the producer ids up again when due; True once if any of them moved.

        All of them are resolved before any is replaced, so a check that fails half-way
        (the registry went down) changes nothing and is tried again later.
        """
        now = time.monotonic()
        if now < self._check_at or now < self._ask_at or not self._ids:
            return False
        with self._lock:
            return self._recheck(now)

    def _recheck(self, now: float) -> bool:
        if now < self._check_at:
            return False  # another thread checked while this one waited for the lock
        self._checked = now
        self._check_at = now + self._settings.schema_ids_recheck_s
        self._registry.forget_cached()  # its lookups are cached: ask the registry itself
        try:
            fresh = {
                event_type: self._ask(self._resolve, event_type) for event_type in list(self._ids)
            }
        except (RegistryUnavailable, KeyError):
            return False
        if fresh == self._ids:
            return False
        moved = sorted(f"{t} {self._ids[t]}->{i}" for t, i in fresh.items() if self._ids[t] != i)
        log.warning(
            "schema registry at %s renumbered the schemas this worker writes (%s): it lost "
            "or renumbered its ids; writing the new ids from now on",
            self._registry.url,
            ", ".join(moved),
        )
        self._ids = fresh
        self._unknown.clear()
        return True

    def _ask(self, call: Callable[..., T], *args: Any) -> T:
        """One registry request, unless a recent failure says to wait a little longer."""
        now = time.monotonic()
        if now < self._ask_at:
            raise self._last_error[0](
                f"{self._last_error[1]} (asking again in {self._ask_at - now:.1f}s)"
            )
        try:
            answer = call(*args)
        except RegistryUnavailable as exc:
            self._last_error = (type(exc), str(exc))
            self._ask_at = now + min(ASK_AGAIN_MAX_S, retry_delay(self._failures))
            self._failures += 1
            raise
        self._failures = 0
        return answer


def _record_schema(schema: Schema) -> dict[str, Any] | None:
    if (schema.schema_type or "AVRO") != "AVRO" or schema.references:
        return None
    try:
        parsed = json.loads(schema.schema_str or "")
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and parsed.get("type") == "record" else None


def build_codec(
    settings: Settings, store: SchemaStore | None = None, topology: Topology | None = None
) -> AvroCodec:
    """The codec every worker uses: schemas from schemas/, ids from the registry when configured
    (subjects by the events' topics in `topology`, default: the settings' topology file)."""
    store = store or SchemaStore(settings.schemas_path)
    if settings.schema_registry_url:
        return AvroCodec(store, RegistrySchemaIds(store, settings, topology=topology))
    return AvroCodec(store, LocalSchemaIds(store))
