"""The `sagastream` command line."""

from __future__ import annotations

import argparse
import sys

from streams.settings import Settings


def _broker(args: argparse.Namespace) -> int:
    from streams import localkafka

    argv = [args.action] + (["--cluster"] if args.cluster else [])
    return localkafka.main(argv)


def _worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    run_worker(Settings(), args.role, args.loglevel)
    return 0


def _topics(args: argparse.Namespace) -> int:
    from streams.admin import create_topics
    from streams.topology import load_topology

    settings = Settings()
    report = create_topics(settings, load_topology(settings.topology_file))
    print(f"created {len(report.created)} topics, {len(report.existing)} already existed")
    for name in report.created:
        print(f"  + {name}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(args.orders, args.seed, args.timeout, args.keep)


def _client(settings: Settings):  # noqa: ANN202
    from streams.app import build_codec
    from streams.client import EventClient
    from streams.topology import load_topology

    return EventClient(
        settings, load_topology(settings.topology_file), build_codec(settings), "sagastream-cli"
    )


def _signal(args: argparse.Namespace) -> int:
    from streams.signals import send_signal

    client = _client(Settings())
    meta = send_signal(client, args.saga, args.key, args.step, args.outcome, args.note, args.by)
    print(
        f"signal {args.outcome} sent to {args.saga}/{args.key}/{args.step} (event {meta['event_id']})"
    )
    return 0


def _api(args: argparse.Namespace) -> int:
    from streams.signals import serve

    server = serve(_client(Settings()), args.host, args.port)
    print(
        f"signals API on http://{args.host}:{server.server_address[1]}/sagas/<saga>/<key>/steps/<step>/signal"
    )
    server.serve_forever()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sagastream", description="Kafka-native saga orchestrator")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run a consumer-group worker process")
    w.add_argument(
        "--role",
        default="all",
        help="orchestrator, a handler of topology.yaml, all, or a comma list",
    )
    w.add_argument("--loglevel", default="warning")
    w.set_defaults(func=_worker)

    t = sub.add_parser("topics", help="manage the topology's topics")
    t.add_argument("action", choices=["create"])
    t.set_defaults(func=_topics)

    d = sub.add_parser("demo", help="run the order saga demo end to end")
    d.add_argument("--orders", type=int, default=200)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for outcomes")
    d.add_argument("--keep", action="store_true", help="keep the demo's topics and state")
    d.set_defaults(func=_demo)

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

    b = sub.add_parser("broker", help="the local Apache Kafka (from Maven Central)")
    b.add_argument("action", choices=["start", "stop", "status"])
    b.add_argument("--cluster", action="store_true", help="3 brokers, replication factor 3")
    b.set_defaults(func=_broker)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from streams.topology import TopologyError

        if isinstance(exc, TopologyError | ValueError | RuntimeError | TimeoutError):
            print(f"sagastream {args.command}: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
