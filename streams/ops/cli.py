"""The `sagastream` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sagastream.errors import SagastreamError, UsageError
from sagastream.runtime.settings import Settings

if TYPE_CHECKING:
    from sagastream.ops.client import EventClient
    from sagastream.ops.dlq import Redrive
    from sagastream.ops.topology_diff import Change, TopologyDiff
    from sagastream.runtime.kafka_io import DeliveryFailed


def _broker(args: argparse.Namespace) -> int:
    from sagastream.local import kafka as localkafka

    argv = [args.action] + (["--cluster"] if args.cluster else [])
    return localkafka.main(argv)


def _jaeger(args: argparse.Namespace) -> int:
    from sagastream.local import jaeger as localjaeger

    return localjaeger.main([args.action])


def _init(args: argparse.Namespace) -> int:
    from sagastream.ops.scaffold import init, package_name

    directory = Path(args.directory)
    written = init(directory)
    print(f"wrote {len(written)} files into {directory} (package {package_name(directory)}):")
    for path in written:
        print(f"  {path.relative_to(directory)}")
    print(f"next: cd {directory} && python -m pytest tests && python run.py")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from sagastream.runtime.worker import run_worker

    settings = Settings()
    if args.app:
        settings = settings.model_copy(update={"app": args.app})
    return run_worker(settings, args.role, args.loglevel)


def _acls(args: argparse.Namespace) -> int:
    from sagastream.core.topology import load_topology
    from sagastream.ops import acls

    settings = Settings()
    topology = load_topology(settings.topology_file, settings.schemas_path)
    known = acls.roles(topology)
    if args.all == (args.role is not None):
        raise UsageError(f"give --role ROLE or --all (roles: {', '.join(known)})")
    chosen = known if args.all else [args.role]
    principals = acls.parse_principal_map(args.principal_map, known)
    found = acls.generate(settings, topology, chosen, principals)
    print("# ACL bindings")
    for acl in found:
        print(acl.binding())
    print("\n# kafka-acls.sh commands (admin.properties: a super user's connection)")
    for acl in found:
        print(acl.command(settings.bootstrap_servers))
    if args.apply:
        settings.check_librdkafka()
        print(f"\ncreated {acls.apply(settings, found)} ACLs at {settings.bootstrap_servers}")
    return 0


def _topics(args: argparse.Namespace) -> int:
    import time

    from sagastream.core.topology import load_topology
    from sagastream.ops.admin import create_topics
    from sagastream.runtime.definitions import DefinitionBook
    from sagastream.wire.codec import SchemaStore

    settings = Settings()
    settings.check_librdkafka()
    topology = load_topology(settings.topology_file, settings.schemas_path)
    report = create_topics(settings, topology)
    print(f"created {len(report.created)} topics, {len(report.existing)} already existed")
    for name in report.created:
        print(f"  + {name}")
    for line in report.weaker:
        print(f"  ! {line} (existing topics are left as they are)")
    book = DefinitionBook(settings, topology, SchemaStore(settings.schemas_path))
    book.read()
    book.refuse_changes(settings.allow_refused_changes)
    for found in book.publish("sagastream topics create", time.time_ns() // 1_000_000, 60.0):
        print(f"published {found.saga} v{found.version} (shape {found.shape}) to {book.topic}")
    return 0


def _topology_schema(args: argparse.Namespace) -> int:
    from sagastream.core.topology import file_json_schema

    print(json.dumps(file_json_schema(), indent=2, sort_keys=True))
    return 0


def _topology_asyncapi(args: argparse.Namespace) -> int:
    from sagastream.core.topology import load_topology
    from sagastream.ops.asyncapi import as_yaml, document
    from sagastream.wire.codec import SchemaStore

    settings = Settings()
    topology = load_topology(settings.topology_file, settings.schemas_path)
    found = document(topology, SchemaStore(settings.schemas_path), settings)
    print(
        json.dumps(found, indent=2) if args.json else as_yaml(found), end="\n" if args.json else ""
    )
    return 0


def _topology_versions(args: argparse.Namespace) -> int:
    import dataclasses

    from sagastream.core.topology import load_topology
    from sagastream.ops.versions import format_versions, versions
    from sagastream.runtime.definitions import DefinitionBook
    from sagastream.wire.codec import SchemaStore

    settings = Settings()
    topology = load_topology(settings.topology_file, settings.schemas_path)
    book = DefinitionBook(settings, topology, SchemaStore(settings.schemas_path))
    rows = versions(settings, topology, book)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        print("\n".join(format_versions(rows)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sagastream.ops.demo import run_demo, stop_demo

    if args.stop:
        return stop_demo(Settings())
    return run_demo(args.orders, args.seed, args.timeout, args.keep, console=args.console)


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sagastream.ops.bench import BenchOptions, parse_rates
    from sagastream.ops.bench_run import run_bench
    from sagastream.ops.bench_scale import parse_counts
    from sagastream.ops.bench_tradeoff import parse_policies

    def scale(spec: str | None, flag: str) -> tuple[int, ...] | None:
        return None if spec is None else parse_counts(spec, flag)

    extras = (
        "restore",
        "console",
        "trace",
        "tradeoff",
        "scale_steps",
        "scale_stored",
        "scale_orchestrators",
    )
    alone = any(getattr(args, name) is not None for name in extras)

    options = BenchOptions(
        orders=args.orders,
        # not given: the BenchOptions default
        **{k: v for k, v in (("steady", args.steady), ("warmup", args.warmup)) if v is not None},
        rates=BenchOptions.rates if args.rates is None else parse_rates(args.rates),
        skip_baseline=args.skip_baseline,
        baseline_commit=args.baseline_commit,
        skip_fanout=args.skip_fanout,
        json_path=Path(args.json),
        plot_path=Path(args.plot),
        timeout=args.timeout,
        seed=args.seed,
        keep=args.keep,
        restore=args.restore,
        console=args.console,
        trace=args.trace,
        tradeoff=None if args.tradeoff is None else parse_policies(args.tradeoff),
        tradeoff_rate=args.tradeoff_rate,
        scale_steps=scale(args.scale_steps, "--scale-steps"),
        scale_stored=scale(args.scale_stored, "--scale-stored"),
        scale_orchestrators=scale(args.scale_orchestrators, "--scale-orchestrators"),
        scale_orders=args.scale_orders,
        worker_python=None if args.worker_python is None else Path(args.worker_python),
        # --restore, --console, --trace, --tradeoff or --scale-* alone measure only that; --orders,
        # --rates, --steady or --warmup ask for the saga phases too
        saga_phases=not alone
        or any(v is not None for v in (args.orders, args.rates, args.steady, args.warmup)),
    )
    return run_bench(options)


def _schemas(args: argparse.Namespace) -> int:
    from sagastream.core.topology import load_topology
    from sagastream.wire.codec import SchemaStore
    from sagastream.wire.registry import (
        Registry,
        check_subjects,
        plan_subjects,
        redact_url,
        register_subjects,
        report,
    )

    settings = Settings()
    directory = Path(args.schemas) if args.schemas else settings.schemas_path
    if args.action in ("generate", "check"):
        return _derived_schemas(args, settings, directory)
    url = args.url or settings.schema_registry_url
    if not url:
        raise UsageError(
            "no schema registry: set SAGASTREAM_SCHEMA_REGISTRY_URL or pass --url "
            "(`sagastream registry start` runs one locally)"
        )
    store = SchemaStore(directory)
    topology = load_topology(settings.topology_file, store.directory)
    subjects = plan_subjects(topology, store, settings)
    checking = args.action == "compat"
    outcomes = (check_subjects if checking else register_subjects)(
        Registry.for_settings(settings, url), subjects
    )
    print(
        f"schema registry {redact_url(url)}: {len(subjects)} subjects, schemas from {store.directory}"
    )
    print("\n".join(report(outcomes, checking)))
    return 1 if any(o.failed for o in outcomes) else 0


def _derived_schemas(args: argparse.Namespace, settings: Settings, directory: Path) -> int:
    """schemas/*.avsc from the project's event models: write them, or say which are stale."""
    from sagastream.core.topology import load_topology
    from sagastream.events import records_of, stale_schemas, write_schemas
    from sagastream.ops.validate import topology_problems

    module = args.app or settings.app or load_topology(settings.topology_file).app
    if not module:
        raise UsageError(
            f"which module holds the event models? Pass --app MODULE or set `app:` in "
            f"{settings.topology_file}"
        )
    models = records_of(module)
    if args.action == "generate":
        changed = write_schemas(models, directory)
        print(f"{len(models)} schemas from {module} in {directory}: {len(changed)} written")
        return 0
    problems = stale_schemas(models, directory)
    for line in problems:
        print(line)
    if problems:
        print(f"run `sagastream schemas generate` to derive them from {module}")
        return 1
    # the topology's references into the schemas (inputs, when) must hold as well
    _, broken = topology_problems(settings, directory)
    for line in broken:
        print(line)
    if broken:
        return 1
    print(f"{len(models)} schemas in {directory} match the models of {module} and the topology")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from sagastream.ops.validate import validate

    settings = Settings()
    if args.app:
        settings = settings.model_copy(update={"app": args.app})
    problems = validate(settings)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problems: a worker would not start")
        return 1
    print(f"{settings.topology_file}, its schemas and the app's handlers are valid")
    return 0


def _registry(args: argparse.Namespace) -> int:
    from sagastream.local import registry as localregistry

    argv = [args.action] + ([] if args.port is None else ["--port", str(args.port)])
    if args.memory:
        if args.action != "start":
            raise UsageError("--memory applies to `registry start` only")
        argv.append("--memory")
    return localregistry.main(argv)


def _client(settings: Settings):  # noqa: ANN202
    from sagastream.core.topology import load_topology
    from sagastream.ops.client import EventClient
    from sagastream.wire.registry import build_codec

    settings.check_librdkafka()
    return EventClient(
        settings,
        load_topology(settings.topology_file, settings.schemas_path),
        build_codec(settings),
        "sagastream-cli",
    )


def _signal(args: argparse.Namespace) -> int:
    from sagastream.ops.signals import send_signal

    client = _client(Settings())
    try:
        meta = send_signal(client, args.saga, args.key, args.step, args.outcome, args.note, args.by)
    finally:
        client.close()
    print(
        f"signal {args.outcome} written for {args.saga}/{args.key}/{args.step} "
        f"(event {meta['event_id']})"
    )
    return 0


def _saga_migrate(args: argparse.Namespace) -> int:
    from sagastream.core.migration import parse_mapping
    from sagastream.ops.migrate import dry_run_lines, plan_all, running_on, send_moves, version_of
    from sagastream.runtime.definitions import DefinitionBook
    from sagastream.runtime.kafka_io import DeliveryFailed
    from sagastream.wire.codec import SchemaStore

    settings = Settings()
    client = _client(settings)
    try:
        book = DefinitionBook(settings, client.topology, SchemaStore(settings.schemas_path))
        book.read()
        old, new = version_of(book, args.saga, args.source), version_of(book, args.saga, args.to)
        mapping = parse_mapping(args.map or ())
        lowest = book.lowest(args.saga)
        found = running_on(
            settings, args.saga, old.shape, lowest is not None and lowest.shape == old.shape
        )
        planned = plan_all(old, new, mapping, found)
        print("\n".join(dry_run_lines(old, new, planned)))
        if not args.execute:
            return 0
        try:
            print("\n".join(send_moves(client, old, new, mapping, planned, args.by)))
        except DeliveryFailed as exc:
            print(f"sagastream saga migrate: the broker refused: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        client.close()


def _api(args: argparse.Namespace) -> int:
    from sagastream.ops.signals import ApiAuth, serve

    settings = Settings()
    auth = ApiAuth.from_settings(settings)  # before the client: no callers, no start
    server = serve(_client(settings), args.host, args.port, auth)
    print(
        f"signals API on http://{args.host}:{server.server_address[1]}/sagas/<saga>/<key>/steps/<step>/signal"
    )
    server.serve_forever()
    return 0


def _console(args: argparse.Namespace) -> int:
    try:
        from sagastream.console.actions import Actions
        from sagastream.console.app import address, listen, serve
        from sagastream.console.readers import ConsoleReader
        from sagastream.ops.signals import ApiAuth
    except ImportError as exc:
        raise UsageError(
            f"the console needs its extra ({exc.name} is missing): pip install 'sagastream[console]'"
        ) from exc

    settings = Settings()
    settings.check_librdkafka()
    host = args.host or settings.console_host
    port = settings.console_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is no TCP port: give 1-65535, or 0 for a free one")
    # no callers, no start: as `sagastream api`
    auth = ApiAuth.from_settings(settings) if settings.console_actions else None
    reader = ConsoleReader(settings)
    actions = None if auth is None else Actions.from_settings(settings, auth, reader.client.events)
    sock = listen(host, port)
    mode = "actions on" if actions else "read-only"
    print(f"sagastream console on {address(sock)} ({mode})", flush=True)
    try:
        serve(reader, sock, actions)
    finally:
        reader.close()
    return 0


def _replay(args: argparse.Namespace) -> int:
    from sagastream.core.topology import load_topology
    from sagastream.ops.replay import (
        Target,
        commit_plan,
        format_plan,
        idempotency_note,
        parse_time,
        plan_rows,
        read_offsets,
        role_topics,
    )

    settings = Settings()
    if args.to_beginning:
        target = Target("beginning")
    elif args.to_end:
        target = Target("end")
    elif args.to_offset is not None:
        target = Target("offset", args.to_offset)
    else:
        target = Target("time", parse_time(args.to_time))
    topology = load_topology(settings.topology_file, settings.schemas_path)
    topics = [settings.topic(t) for t in role_topics(topology, args.group, args.topic, args.saga)]
    group = settings.group(args.group)
    committed, watermarks, times = read_offsets(settings, group, topics, args.partition, target)
    rows = plan_rows(committed, watermarks, target, times)
    print("\n".join(format_plan(group, target, rows)))
    print(idempotency_note(args.group))
    if not args.execute:
        print("dry run: nothing changed (add --execute to commit these offsets)")
        return 0
    commit_plan(settings, group, rows)
    print(f"committed the new offsets of {len(rows)} partitions for group {group}")
    return 0


def _shadow(args: argparse.Namespace) -> int:
    from sagastream.ops.shadow import ShadowOptions, run_shadow
    from sagastream.ops.times import parse_time

    options = ShadowOptions(
        topology_file=None if args.topology is None else Path(args.topology),
        saga=args.saga,
        since_ms=None if args.from_time is None else parse_time(args.from_time),
        prefix=args.shadow_prefix,
        keep=args.keep,
        timeout_s=args.timeout,
    )
    differences = run_shadow(Settings(), options)
    unexplained = [d for d in differences if not d.explained]
    return 1 if args.fail_on_diff and unexplained else 0


def _dlq(args: argparse.Namespace) -> int:
    from sagastream.ops import dlq

    client = _client(Settings())
    try:
        topology = client.topology
        if args.action == "show":
            topic = dlq.resolve_topic(topology, args.topic)
            letters = dlq.read_dead_letters(client, [topic])
            print(dlq.show(dlq.find(letters, topic, args.partition, args.offset)))
            return 0
        topics = (
            [dlq.resolve_topic(topology, args.topic)] if args.topic else dlq.dlq_topics(topology)
        )
        letters = dlq.read_dead_letters(client, topics)
        if args.action == "list":
            groups = dlq.group(letters)
            print("\n".join(dlq.group_table(groups)))
            print(f"{len(letters)} dead letters in {len(topics)} dead-letter topics")
            return 0
        selection = dlq.Selection(
            reason=args.reason,
            partition=args.partition,
            from_offset=args.from_offset,
            to_offset=args.to_offset,
            key=args.key,
            since_ms=None if args.since is None else dlq.parse_time(args.since),
            until_ms=None if args.until is None else dlq.parse_time(args.until),
        )
        plans = dlq.plan_selected(letters, selection, topology, client.settings, args.max_redrives)
        refused = sum(1 for p in plans if p.refused)
        if not args.execute:
            for plan in plans:
                print(dlq.describe(plan))
            print(
                f"dry run: would redrive {len(plans) - refused} dead letters, refuse {refused}; "
                "nothing published (add --execute)"
            )
            return 0
        return _redrive(client, plans, refused)
    finally:
        client.close()


def _redrive(client: EventClient, plans: list[Redrive], refused: int) -> int:
    """Redrive, and say per dead letter what the broker answered; exit 1 if it refused any."""
    from sagastream.ops import dlq

    for plan in plans:
        if plan.refused:
            print(dlq.describe(plan))
    results = dlq.execute(client, plans)
    for plan, delivery in results:
        print(dlq.describe(plan, delivery))
    failed = sum(1 for _, delivery in results if not delivery.ok)
    print(f"redrove {len(results) - failed} dead letters, refused {refused}")
    if failed:
        print(
            f"sagastream dlq: the broker did not write {failed} redriven dead letters (NOT "
            "redriven above); they stay in the dead-letter topic",
            file=sys.stderr,
        )
        return 1
    return 0


def _saga(args: argparse.Namespace) -> int:
    import time

    from sagastream.ops.client import Client
    from sagastream.ops.inspect import format_list, format_view, view_json

    if args.action == "list":
        from sagastream.ops.times import parse_duration

        older = None if args.older_than is None else parse_duration(args.older_than)
        with Client() as client:
            listing = client.list_sagas(args.status or (), args.saga, older, args.limit)
        if args.json:
            print(json.dumps(listing.to_dict(), indent=2))
        else:
            print("\n".join(format_list(listing, time.time_ns() // 1_000_000)))
        return 0
    with Client() as client:
        view = client.describe(args.saga, args.key)
        changelog = client.settings.changelog_topic()
    if view is None:
        print(
            f"sagastream saga show: no {args.saga} saga with key {args.key!r} "
            f"(its partition of {changelog} holds no state for it; ended sagas are removed "
            "after their retention_ms)",
            file=sys.stderr,
        )
        return 1
    print(
        view_json(view) if args.json else "\n".join(format_view(view, time.time_ns() // 1_000_000))
    )
    return 0


def _trace(args: argparse.Namespace) -> int:
    """A saga's trace from Jaeger, by the trace id of its stored state's traceparent."""
    from sagastream.core.spans import trace_of
    from sagastream.core.topology import load_topology
    from sagastream.ops.client import stored_state
    from sagastream.ops.traces import fetch_trace, from_jaeger, render

    settings = Settings()
    if not settings.traces_url:
        raise UsageError(
            "SAGASTREAM_TRACES_URL is not set: set it to Jaeger's query API, e.g. "
            "http://127.0.0.1:16686 for `sagastream jaeger start`"
        )
    topology = load_topology(settings.topology_file, settings.schemas_path)
    if args.saga not in topology.sagas:
        raise UsageError(
            f"no saga {args.saga!r} in {settings.topology_file}: {sorted(topology.sagas)}"
        )
    state = stored_state(settings, topology, args.saga, args.key)
    if state is None:
        print(
            f"sagastream trace show: no {args.saga} saga with key {args.key!r} is stored (ended "
            "sagas are removed after their retention_ms), so its trace id is unknown",
            file=sys.stderr,
        )
        return 1
    trace_id = trace_of(state)[0]
    trace = fetch_trace(settings.traces_url, trace_id)
    if args.json:
        print(json.dumps(trace, indent=2))
    else:
        heading = f"trace {trace_id}  {args.saga} {args.key}  {len(trace.get('spans') or [])} spans"
        print(render(from_jaeger(trace), heading))
    return 0


def _topology_diff(args: argparse.Namespace) -> int:
    from sagastream.ops.topology_diff import diff_topologies, parse_allow
    from sagastream.ops.validate import load_topology_file

    allow = parse_allow(args.allow)
    diff = diff_topologies(load_topology_file(Path(args.old)), load_topology_file(Path(args.new)))
    if args.json:
        print(json.dumps({"old": args.old, "new": args.new, **diff.to_dict(allow)}, indent=2))
        return 1 if diff.not_allowed(allow) else 0
    return _report_diff(diff, allow)


def _report_diff(diff: TopologyDiff, allow: tuple[Change, ...]) -> int:
    """A diff's findings, then those of a class `allow` lacks; exit 1 if there are any."""
    from sagastream.ops.topology_diff import SCHEMAS_NOTE

    refused = diff.not_allowed(allow)
    print("\n".join(diff.lines()))
    print(f"note: {SCHEMAS_NOTE}")
    if refused:
        print(f"{len(refused)} changes of a class not allowed (--allow {','.join(allow)}):")
        print("\n".join(f"  {f}" for f in refused))
    return 1 if refused else 0


def _topology_check(args: argparse.Namespace) -> int:
    from sagastream.core.topology import load_topology
    from sagastream.ops.topology_diff import check_deployed, parse_allow
    from sagastream.ops.versions import count_running
    from sagastream.runtime.definitions import DefinitionBook
    from sagastream.wire.codec import SchemaStore

    allow = parse_allow(args.allow)
    settings = Settings()
    topology = load_topology(settings.topology_file, settings.schemas_path)
    book = DefinitionBook(settings, topology, SchemaStore(settings.schemas_path))
    book.read()
    newest = book.newest()
    running: dict[str, int] = {}
    for (saga, _), count in count_running(settings).items():
        running[saga] = running.get(saga, 0) + count
    diff = check_deployed({s: d.spec for s, d in newest.items()}, running, topology)
    for saga, deployed in newest.items():
        print(
            f"{saga}: deployed v{deployed.version} ({deployed.shape}), {running.get(saga, 0)} running"
        )
    return _report_diff(diff, allow)


def _add_topology(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tp = sub.add_parser("topology", help="what a change of topology.yaml means for sagas in flight")
    tp_sub = tp.add_subparsers(dest="action", required=True)
    td = tp_sub.add_parser(
        "diff",
        help="classify every change from OLD to NEW: safe, version or refused",
        description="safe: policies (timeouts, retries, waits, deadline, retention, audit, "
        "notify) or anything outside the sagas: sagas in flight take it. version: a saga's shape "
        "changed (steps added, removed or renamed, dependencies, inputs, commands, results, "
        "conditions, compensations): sagas in flight finish on their version. refused: a "
        "saga's start event or key field, a saga removed, an event type's topics or a topic's "
        "partition count under a saga. Each file is read with the schemas next to it. Exit 0 "
        "if every change's class is allowed, 1 if not, 2 if a file cannot be read.",
    )
    td.add_argument("old", metavar="OLD", help="the topology file deployed now")
    td.add_argument("new", metavar="NEW", help="the changed one")
    td.add_argument(
        "--allow",
        default="safe,version",
        help="the change classes CI accepts, comma-separated (default: safe,version)",
    )
    td.add_argument("--json", action="store_true", help="the findings as JSON")
    td.set_defaults(func=_topology_diff)
    tv = tp_sub.add_parser(
        "versions",
        help="per saga each published version: its shape, when it was published, its running "
        "instances (from the state changelog) and whether it is current, draining or retired",
    )
    tv.add_argument("--json", action="store_true", help="the rows as JSON")
    tv.set_defaults(func=_topology_versions)
    tc = tp_sub.add_parser(
        "check",
        help="classify the topology file's changes against the deployed versions (the "
        "definitions topic), as `diff` does between two files",
        description="Each saga of SAGASTREAM_TOPOLOGY_FILE against its newest published version; "
        "a saga the file drops is refused while instances of it run. Exit 0 if every change's "
        "class is allowed, 1 if not.",
    )
    tc.add_argument(
        "--allow",
        default="safe,version",
        help="the change classes CI accepts, comma-separated (default: safe,version)",
    )
    tc.set_defaults(func=_topology_check)
    ta = tp_sub.add_parser(
        "asyncapi",
        help="every topic and event of the topology file as an AsyncAPI 3.0 document (YAML), "
        "each message's payload its Avro schema; the console serves it at /asyncapi.yaml",
    )
    ta.add_argument("--json", action="store_true", help="JSON instead of YAML")
    ta.set_defaults(func=_topology_asyncapi)
    ts = tp_sub.add_parser(
        "schema",
        help="the JSON Schema of topology.yaml, for editors to complete and check the file "
        "(the same as the package's sagastream/topology.schema.json)",
    )
    ts.set_defaults(func=_topology_schema)


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sagastream bench` and its flags (README "Benchmark" lists each with its default)."""
    bn = sub.add_parser(
        "bench",
        help="throughput, latency, CPU and Kafka writes of the order saga, against plain Kafka",
        description="Runs the order saga on the broker with a worker process per role and "
        "instant handlers: a warm-up at the maximum rate (reported apart), a steady window at "
        "the maximum rate, each fixed rate; then the same hops on plain confluent-kafka, as "
        "many sagas at the same commit policy (the physical limit every figure is divided by); "
        "then parallel "
        "against chained steps with handler latencies of 200, 100 and 150 ms.",
    )
    bn.add_argument(
        "--orders",
        type=int,
        default=None,
        help="sagas per fixed-rate point (default: 5 s worth, at most 2000)",
    )
    bn.add_argument(
        "--steady",
        type=int,
        default=None,
        metavar="N",
        help="sagas in the maximum-rate window, sagastream's and the baseline's (default 20000)",
    )
    bn.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="N",
        help="sagas at the maximum rate before it, reported apart (default 2000)",
    )
    bn.add_argument(
        "--rates",
        default=None,
        help="fixed rates in sagas/s, comma-separated (default 100,300,600)",
    )
    bn.add_argument("--skip-baseline", action="store_true", help="no plain confluent-kafka run")
    bn.add_argument(
        "--baseline-commit",
        choices=("same", "interval"),
        default="same",
        help="the baseline's transaction commits: the same policy as sagastream's (commit "
        "interval and linger, the default), or at the commit interval only (then no ratios)",
    )
    bn.add_argument("--skip-fanout", action="store_true", help="no parallel/chained comparison")
    bn.add_argument("--json", default="bench-results.json", help="where to write the results")
    bn.add_argument("--plot", default="bench-latency.png", help="latency against rate (PNG)")
    bn.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for outcomes")
    bn.add_argument("--seed", type=int, default=42)
    bn.add_argument("--keep", action="store_true", help="keep the run's topics and state")
    bn.add_argument(
        "--console",
        type=int,
        default=None,
        metavar="N",
        help="time the console with N sagas: its index's catch-up, then the sagas page (all, "
        "a status filter, a key search, a deep page, newest first) and the overview; alone, "
        "runs only that",
    )
    bn.add_argument(
        "--restore",
        type=int,
        default=None,
        metavar="N",
        help="time an orchestrator's restore of N sagas, from an empty data directory and from "
        "its checkpoint; alone, runs only that (add --orders or --rates for the saga phases)",
    )
    bn.add_argument(
        "--trace",
        type=int,
        nargs="?",
        const=1000,
        default=None,
        metavar="N",
        help="CPU per saga with tracing off, and exporting spans sampled at 0.1 and 1.0, N orders "
        "each (default 1000) at the maximum rate; to OTEL_EXPORTER_OTLP_ENDPOINT, else the local "
        "Jaeger; alone, runs only that",
    )
    bn.add_argument(
        "--tradeoff",
        nargs="?",
        const="100:20,100:5,100:0,50:0,200:50",
        default=None,
        metavar="INTERVAL:LINGER,...",
        help="p50/p99, sagas/s and transactions/s at --tradeoff-rate for each orchestrator commit "
        "interval and linger in ms (default 100:20,100:5,100:0,50:0,200:50); alone, runs only that",
    )
    for flag, const, what in (
        ("--scale-steps", "2,5,10", "saga sizes: chains and fan-outs of that many steps"),
        ("--scale-stored", "100000,1000000", "sagas already in the store (and none)"),
        ("--scale-orchestrators", "1,2,4", "orchestrator processes on the same partitions"),
    ):
        bn.add_argument(
            flag,
            nargs="?",
            const=const,
            default=None,
            metavar="N,...",
            help=f"CPU per saga against {what} (default {const}); alone, runs only that",
        )
    bn.add_argument(
        "--scale-orders",
        type=int,
        default=2000,
        metavar="N",
        help="sagas per scale point, at the maximum rate (default 2000)",
    )
    bn.add_argument(
        "--worker-python",
        default=None,
        metavar="PATH",
        help="the Python of another sagastream install to run sagastream's workers, e.g. an "
        "older release's venv, measured beside this one's baseline (default: this one's)",
    )
    bn.add_argument(
        "--tradeoff-rate",
        type=float,
        default=300.0,
        help="sagas/s for the trade-off table (default 300)",
    )
    bn.set_defaults(func=_bench)


def parser() -> argparse.ArgumentParser:
    from sagastream.core.saga import COMPENSATED, COMPENSATING, COMPLETED, FAILED, RUNNING

    p = argparse.ArgumentParser(prog="sagastream", description="Kafka-native saga orchestrator")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("init", help="write a small working project into a new folder")
    i.add_argument("directory")
    i.set_defaults(func=_init)

    w = sub.add_parser("worker", help="run a consumer-group worker process")
    w.add_argument(
        "--role",
        default="all",
        help="orchestrator, a handler of topology.yaml, all, or a comma list",
    )
    w.add_argument(
        "--app",
        default=None,
        help="module of the handler functions, or module:attribute (default: topology app)",
    )
    w.add_argument("--loglevel", default="warning")
    w.set_defaults(func=_worker)

    ac = sub.add_parser(
        "acls",
        help="the least-privilege Kafka ACLs of each role (bindings and kafka-acls.sh commands)",
    )
    ac.add_argument(
        "--role",
        default=None,
        help="orchestrator, a handler role, topic-creator, operator or operator-readonly",
    )
    ac.add_argument("--all", action="store_true", help="every role")
    ac.add_argument(
        "--principal-map",
        action="append",
        default=[],
        metavar="ROLE=User:NAME",
        help="the principal a role runs as (repeatable; default User:<role>)",
    )
    ac.add_argument(
        "--apply", action="store_true", help="create them through the Admin API (as a super user)"
    )
    ac.set_defaults(func=_acls)

    t = sub.add_parser("topics", help="manage the topology's topics")
    t.add_argument("action", choices=["create"])
    t.set_defaults(func=_topics)

    d = sub.add_parser("demo", help="run the order saga demo end to end")
    d.add_argument("--orders", type=int, default=200)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for outcomes")
    d.add_argument("--keep", action="store_true", help="keep the demo's topics and state")
    d.add_argument(
        "--console",
        action="store_true",
        help="leave a console on the run's sagas running (and its topics, broker and registry)",
    )
    d.add_argument(
        "--stop", action="store_true", help="stop what --console left running, remove its run"
    )
    d.set_defaults(func=_demo)

    _bench_parser(sub)

    s = sub.add_parser("signal", help="deliver a human decision to a waiting step of any saga")
    s.add_argument("saga")
    s.add_argument("key", help="the saga key (order id, loan id, ...)")
    s.add_argument("step")
    s.add_argument("--outcome", required=True, choices=["approved", "rejected"])
    s.add_argument("--note", default=None)
    s.add_argument("--by", default="cli", help="who decided")
    s.set_defaults(func=_signal)

    a = sub.add_parser(
        "api", help="HTTP API for signals: POST /sagas/<saga>/<key>/steps/<step>/signal"
    )
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8088)
    a.set_defaults(func=_api)

    co = sub.add_parser(
        "console",
        help="the web console: overview, sagas, one saga's DAG and timeline, dead letters, "
        "topology; read-only unless SAGASTREAM_CONSOLE_ACTIONS",
        description="Serves HTML pages read from Kafka (the state changelog, sagas.lifecycle, "
        "the outcome topics, the dead-letter topics, the definitions) with the workers' "
        "settings; no database. Read-only, unless SAGASTREAM_CONSOLE_ACTIONS lets users of "
        "SAGASTREAM_API_TOKENS approve or reject waiting human steps.",
    )
    co.add_argument("--host", default=None, help="default: SAGASTREAM_CONSOLE_HOST, 127.0.0.1")
    co.add_argument("--port", type=int, default=None, help="default: SAGASTREAM_CONSOLE_PORT, 8089")
    co.set_defaults(func=_console)

    v = sub.add_parser(
        "validate",
        help="check topology.yaml, the schemas and the app's handlers as a worker start would",
        description="No broker needed; exit 1 if a worker would refuse to start (for CI).",
    )
    v.add_argument(
        "--app", default=None, help="module of the handler functions (default: topology app)"
    )
    v.set_defaults(func=_validate)

    sc = sub.add_parser(
        "schemas",
        help="derive schemas/*.avsc from the event models, check them, or register them",
        description="generate: write schemas/<Event>.avsc for every event model of the app "
        "module. check: exit 1 if one is missing or stale, or the topology's inputs and "
        "conditions do not match them (for CI). "
        "Registry subjects are <topic>-<record full name> (TopicRecordNameStrategy) with the "
        "topic prefix applied; compatibility levels come from topology.yaml schema_registry. "
        "register: idempotent; exit 1 if the registry refuses a schema. "
        "compat: changes nothing; exit 1 if a local schema is incompatible with the registry's.",
    )
    sc.add_argument("action", choices=["generate", "check", "register", "compat"])
    sc.add_argument(
        "--app", default=None, help="module of the event models (default: topology app)"
    )
    sc.add_argument("--url", default=None, help="default: $SAGASTREAM_SCHEMA_REGISTRY_URL")
    sc.add_argument("--schemas", default=None, help="schema directory (default: schemas/)")
    sc.set_defaults(func=_schemas)

    r = sub.add_parser(
        "registry", help="the local schema registry (Apicurio Registry from Maven Central)"
    )
    r.add_argument("action", choices=["start", "stop", "status"])
    r.add_argument("--port", type=int, default=None, help="default: 8081")
    r.add_argument(
        "--memory",
        action="store_true",
        help="keep schemas in memory, lost at stop (default: kept in a file across restarts)",
    )
    r.set_defaults(func=_registry)

    dq = sub.add_parser(
        "dlq",
        help="list, show and redrive dead letters",
        description="Reads the dead-letter topics of topology.yaml (committed records, to their "
        "end). TOPIC is a dead-letter topic (orders.events.dlq) or the topic it serves.",
    )
    dq_sub = dq.add_subparsers(dest="action", required=True)
    dl = dq_sub.add_parser("list", help="dead letters by topic and reason, with counts and times")
    dl.add_argument("--topic", default=None)
    ds = dq_sub.add_parser("show", help="one dead letter, decoded, with its headers (JSON)")
    ds.add_argument("topic")
    ds.add_argument("partition", type=int)
    ds.add_argument("offset", type=int)
    dr = dq_sub.add_parser(
        "redrive",
        help="re-publish selected dead letters to their source topic (dry run unless --execute)",
        description="Each selected dead letter goes back to its dlq.original.topic with its key, "
        "value and headers minus dlq.*, plus dlq.redrive.count; one redriven --max-redrives "
        "times already is refused. Offsets are inclusive; --since is inclusive, --until "
        "exclusive (dlq.failed.at; ISO 8601, UTC unless stated, or epoch ms).",
    )
    dr.add_argument("--topic", default=None)
    dr.add_argument("--reason", default=None, help="e.g. unknown_schema_id, processing_error")
    dr.add_argument("--partition", type=int, default=None, help="dlq partition")
    dr.add_argument("--from-offset", type=int, default=None)
    dr.add_argument("--to-offset", type=int, default=None)
    dr.add_argument("--key", default=None, help="the message key (saga key)")
    dr.add_argument("--since", default=None)
    dr.add_argument("--until", default=None)
    dr.add_argument("--max-redrives", type=int, default=3)
    dr.add_argument("--execute", action="store_true", help="publish (default: dry run)")
    dq.set_defaults(func=_dlq)

    b = sub.add_parser("broker", help="the local Apache Kafka (from Maven Central)")
    b.add_argument("action", choices=["start", "stop", "status"])
    b.add_argument("--cluster", action="store_true", help="3 brokers, replication factor 3")
    b.set_defaults(func=_broker)

    j = sub.add_parser(
        "jaeger", help="the local Jaeger v2 trace backend (built with Go from the module proxy)"
    )
    j.add_argument("action", choices=["build", "start", "stop", "status"])
    j.set_defaults(func=_jaeger)

    rp = sub.add_parser("replay", help="reprocess a consumer group's input from an earlier point")
    rp_sub = rp.add_subparsers(dest="action", required=True)
    rr = rp_sub.add_parser(
        "reset",
        help="move a consumer group's committed offsets (a dry run unless --execute)",
        description="Prints, per partition, the committed offset, the new one and the messages "
        "to reprocess; --execute commits the new offsets, and only while the group has no "
        "active members. Reprocessing is idempotent (saga dedup by event id, handler "
        "idempotency keys).",
    )
    rr.add_argument("--group", required=True, help="orchestrator or a handler role")
    scope = rr.add_mutually_exclusive_group()
    scope.add_argument("--topic", default=None, help="one logical topic the role consumes")
    scope.add_argument("--saga", default=None, help="the orchestrator's inputs of one saga type")
    rr.add_argument("--partition", type=int, default=None, help="one partition of each topic")
    to = rr.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-beginning", action="store_true")
    to.add_argument("--to-end", action="store_true")
    to.add_argument("--to-offset", type=int, default=None, metavar="N")
    to.add_argument(
        "--to-time",
        default=None,
        metavar="TIME",
        help="ISO 8601 (UTC unless a zone is given) or epoch milliseconds",
    )
    rr.add_argument("--execute", action="store_true", help="commit the offsets (default: dry run)")
    rr.set_defaults(func=_replay)
    rs = rp_sub.add_parser(
        "shadow",
        help="replay the live inputs through a (changed) topology in a shadow, compare per saga",
        description="Runs an orchestrator in a new consumer group on the live input topics, up "
        "to their ends as of its start, in event time (each record decided at its timestamp, "
        "timers fired when event time passes them, each saga's events in the order the live "
        "run decided them), writing under --shadow-prefix; no handler runs. Then prints each "
        "saga whose outcome or commands (type, step, attempt, in order) differ from the live "
        "run's otherwise than `topology diff` explains (a renamed, added or removed step's "
        "commands), counts those it explains, and removes the shadow unless --keep.",
    )
    rs.add_argument("--topology", default=None, metavar="FILE", help="default: the live one")
    rs.add_argument("--saga", default=None, help="one saga type (default: all)")
    since = rs.add_mutually_exclusive_group()
    since.add_argument("--from-beginning", action="store_true", help="the default")
    since.add_argument(
        "--from-time",
        default=None,
        metavar="TIME",
        help="sagas started since TIME (ISO 8601, UTC unless a zone is given, or epoch ms)",
    )
    rs.add_argument("--shadow-prefix", default=None, help="default: shadow-<time>-")
    rs.add_argument("--keep", action="store_true", help="keep the shadow's topics, group, state")
    rs.add_argument(
        "--fail-on-diff",
        action="store_true",
        help="exit 1 if any saga differs otherwise than `topology diff` explains",
    )
    rs.add_argument("--timeout", type=float, default=600.0, help="seconds the replay may take")
    rs.set_defaults(func=_shadow)

    _add_topology(sub)

    sg = sub.add_parser("saga", help="inspect sagas")
    sg_sub = sg.add_subparsers(dest="action", required=True)
    ss = sg_sub.add_parser(
        "show",
        help="one saga: status, steps with attempts and times, pending timers, history",
        description="Reads the saga key's partition of the orchestrator's state changelog and "
        "of sagas.lifecycle, whichever process owns it. Exit 1 if there is no such saga.",
    )
    ss.add_argument("saga", help="the saga type (order, loan, ...)")
    ss.add_argument("key", help="the saga key (order id, loan id, ...)")
    ss.add_argument("--json", action="store_true", help="the view as JSON (times in epoch ms)")
    sm = sg_sub.add_parser(
        "migrate",
        help="move running instances of a saga from one published version to another",
        description="Dry run by default: per instance running on --from, what it would be on "
        "--to, or why it cannot move. --execute sends one SagaMigrate per movable instance to "
        "sagas.signals; the orchestrator plans again and moves it in its transaction, or "
        "dead-letters the event with why. Exit 1 if the broker refused any.",
    )
    sm.add_argument("--saga", required=True, help="the saga type (order, loan, ...)")
    sm.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the version it runs on (2, v2 or a shape prefix)",
    )
    sm.add_argument("--to", required=True, help="the version to move to (number or shape prefix)")
    sm.add_argument("--map", action="append", metavar="OLD=NEW", help="a renamed step; repeatable")
    sm.add_argument("--execute", action="store_true", help="send the moves (default: dry run)")
    sm.add_argument("--by", default="cli", help="who asks (the events' requested_by)")
    sm.set_defaults(func=_saga_migrate)
    sl = sg_sub.add_parser(
        "list",
        help="sagas of every partition by status and age, oldest first",
        description="Reads every partition of the orchestrator's compacted state changelog to "
        "its end once (committed records), keeping the last state per saga: its cost is about "
        "one record per live saga (ended sagas leave after their retention_ms, 7 days by "
        "default) plus updates compaction has not cleaned up yet, whatever the filters; only "
        "matches are kept in memory. No input topic is read. Age counts from the saga's start.",
    )
    sl.add_argument(
        "--status",
        action="append",
        choices=[RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED],
        help="repeatable; default: any",
    )
    sl.add_argument("--saga", default=None, help="one saga type (order, loan, ...)")
    sl.add_argument("--older-than", default=None, metavar="AGE", help="e.g. 90s, 10m, 2h, 7d")
    sl.add_argument("--limit", type=int, default=None, help="the N oldest matches")
    sl.add_argument("--json", action="store_true", help="as JSON (times in epoch ms)")
    sg.set_defaults(func=_saga)

    tr = sub.add_parser("trace", help="a saga's trace, read from Jaeger's query API")
    tr_sub = tr.add_subparsers(dest="action", required=True)
    ts = tr_sub.add_parser(
        "show",
        help="one saga's span tree: offsets, durations, attempts, outcomes, events, critical path",
        description="Reads the saga's stored state for its trace id (its start event's "
        "traceparent), then that trace from SAGASTREAM_TRACES_URL (Jaeger's query API). "
        "Read-only. Exit 1 if there is no such saga.",
    )
    ts.add_argument("saga", help="the saga type (order, notice, ...)")
    ts.add_argument("key", help="the saga key")
    ts.add_argument("--json", action="store_true", help="the trace as Jaeger's JSON")
    tr.set_defaults(func=_trace)
    return p


def _refusals(exc: DeliveryFailed) -> list[str]:
    """Who may not write where, for each topic the broker refused this principal."""
    from sagastream.ops.acls import OPERATOR
    from sagastream.runtime.kafka_io import refused

    topics = sorted({d.topic for d in exc.failed if "AUTHORIZATION_FAILED" in (d.error or "")})
    return [refused(Settings(), "WRITE", f"topic {topic}", OPERATOR) for topic in topics]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from sagastream.local.proc import LocalToolError  # standard library only: not a SagastreamError
    from sagastream.ops.terminal import printable_message
    from sagastream.runtime.kafka_io import DeliveryFailed

    try:
        # a project's own modules (its app, its events) are importable from its folder, as with
        # `python -m`; that folder is the topology file's
        project = str(Settings().topology_file.parent)
        if project not in sys.path:
            sys.path.insert(0, project)
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader left (`| head`): stop writing, quietly, as a Unix tool does on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    except DeliveryFailed as exc:
        print(f"sagastream {args.command}: {printable_message(str(exc))}", file=sys.stderr)
        for line in _refusals(exc):
            print(f"sagastream {args.command}: {printable_message(line)}", file=sys.stderr)
        return 1
    except (SagastreamError, LocalToolError, TimeoutError) as exc:
        # expected: the message says what and what to do; anything else is a bug and shows
        # its traceback. It may echo what was typed or read (a saga key): escaped
        print(f"sagastream {args.command}: {printable_message(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
