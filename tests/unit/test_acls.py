"""`sagastream acls`: what each role of the demo topology is granted, and what it is not."""

from __future__ import annotations

import pytest

from sagastream.core.topology import load_topology
from sagastream.errors import UsageError
from sagastream.ops import acls
from sagastream.runtime.settings import Settings

SETTINGS = Settings(topic_prefix="p-", app_id="shop")
TOPOLOGY = load_topology(SETTINGS.topology_file, SETTINGS.schemas_path)


def grants(role: str) -> set[tuple[str, str, str, str]]:
    return {
        (a.resource, a.name, a.pattern, a.operation)
        for a in acls.acls_for(role, f"User:{role}", SETTINGS, TOPOLOGY)
    }


def topics(role: str, operation: str) -> set[str]:
    return {name for kind, name, _, op in grants(role) if kind == "TOPIC" and op == operation}


def test_the_orchestrator_creates_nothing_and_cannot_forge_results_or_signals() -> None:
    """Issue 17: it asked for CREATE and DESCRIBE on every topic of the topology."""
    assert not topics("orchestrator", "CREATE")
    assert "p-sagas.signals" in topics("orchestrator", "READ")
    written = topics("orchestrator", "WRITE")
    assert "p-payments.commands" in written and "p-sagas.lifecycle" in written
    assert "p-payments.events" not in written and "p-sagas.signals" not in written
    assert "p-shop-orchestrator-sagas-changelog" in written
    assert ("TRANSACTIONAL_ID", "p-shop-orchestrator-", "PREFIXED", "WRITE") in grants(
        "orchestrator"
    )


def test_a_handler_reads_its_commands_and_writes_its_results_and_dlq_only() -> None:
    assert topics("payment", "READ") == {"p-payments.commands"}
    assert topics("payment", "WRITE") == {"p-payments.events", "p-payments.commands.dlq"}
    assert ("GROUP", "p-shop-payment", "LITERAL", "READ") in grants("payment")


def test_the_read_only_operator_writes_nothing_and_the_operator_signals() -> None:
    assert not topics("operator-readonly", "WRITE")
    # the console's lag per role: each worker group described, never joined or committed to
    for role in ("operator", "operator-readonly"):
        described = {n for kind, n, _, op in grants(role) if kind == "GROUP" and op == "DESCRIBE"}
        assert described == {f"p-shop-{r}" for r in ["orchestrator", *TOPOLOGY.handlers]}
        assert not {n for kind, n, _, op in grants(role) if kind == "GROUP" and op == "READ"} & (
            described
        )
    assert "p-sagas.signals" in topics("operator", "WRITE")
    # a redrive goes back to a topic someone consumes, never to an output like the lifecycle
    assert "p-sagas.lifecycle" not in topics("operator", "WRITE")


def test_a_prefixed_binding_prints_as_a_kafka_acls_command() -> None:
    acl = acls.Acl("User:o", "TRANSACTIONAL_ID", "p-shop-orchestrator-", "PREFIXED", "WRITE")
    assert acl.command("kafka:9093") == (
        "kafka-acls.sh --bootstrap-server kafka:9093 --command-config admin.properties --add "
        "--allow-principal 'User:o' --operation Write --transactional-id "
        "'p-shop-orchestrator-' --resource-pattern-type prefixed"
    )


def test_a_principal_map_names_known_roles_only() -> None:
    known = acls.roles(TOPOLOGY)
    assert acls.parse_principal_map(["payment=User:CN=pay"], known) == {"payment": "User:CN=pay"}
    with pytest.raises(UsageError, match="no role 'paymnt'"):
        acls.parse_principal_map(["paymnt=User:pay"], known)
