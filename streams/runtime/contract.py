"""The handler contract: what a handler may answer to a command, and how a failed attempt is said.

The one place the handler side's rules live. The handler loop (runtime) and sagastream.testing
(the kit) both call it, so a handler behaves the same under both. Pure: no Kafka, no clock.

    contract = Contract(topology)                     # once per topology
    contract.check_function(function, commands)       # at registration: the declared return type
    why = contract.check_result(command_type, result_type)   # at run time: None if allowed
    if why is not None:
        result = contract.attempt_failed(command_type, record, AttemptError.of("contract", why))

A runner of handler functions (the handler loop, the kit) sets HEARTBEAT around each call (a
function that starts the attempt's bound again), maps what the call raised with
AttemptError.from_exception (ContractError from App's RoleHandler -> contract, RecordTooLarge ->
too_large, else exception), a run past the bound with AttemptError.of("timeout", why), and
answers with contract.attempt_failed(...) when reports_failures(command_type) (a command sent
by a step or undo; a notification's failure is only logged).

A command's results are the success and failure events of every step and compensation that
sends it (a notification command's: the non-command events its role produces). Nothing else
is accepted: not an outcome (SagaCompleted...), a signal (StepSignal), a timer, another step's
result, nor a command. An attempt that does not end in an accepted result (its function raised,
ran past its bound, answered a wrong type, or a result too large to send) is answered with a
StepAttemptFailed naming the step, the kind and the error, which the orchestrator retries by
the step's policy at once.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from sagastream.core.topology import ATTEMPT_FAILED_EVENT, ENGINE_EVENTS, Topology
from sagastream.errors import SagastreamError

ATTEMPT_FAILED = ATTEMPT_FAILED_EVENT
# why an attempt failed; `timeout` is retried under the policy's `on: timeout`, the rest `error`
Kind = Literal["exception", "timeout", "contract", "too_large"]
KINDS: tuple[Kind, ...] = ("exception", "timeout", "contract", "too_large")
# a StepAttemptFailed message is for people: long texts are cut to this many characters
MESSAGE_MAX_CHARS = 2_000
Result = tuple[str, dict[str, Any]]


class ContractError(SagastreamError, TypeError):
    """A handler function that breaks the contract: at registration, a declared return type
    the command cannot be answered with; at run time, a result of a type it may not send."""


@dataclass(frozen=True)
class Sender:
    """A step or compensation that sends a command: what its results are."""

    saga: str
    step: str
    compensation: bool
    results: tuple[str, ...]


def senders(topology: Topology, command_type: str) -> tuple[Sender, ...]:
    """Every step and compensation that sends `command_type`, in topology order."""
    found = []
    for saga_name, saga in topology.sagas.items():
        for name, step in saga.steps.items():
            if step.command == command_type and step.success is not None:
                found.append(Sender(saga_name, name, False, (step.success, *step.failure)))
            undo = step.compensation
            if undo is not None and undo.command == command_type:
                found.append(Sender(saga_name, name, True, (undo.success, *undo.failure)))
    return tuple(found)


def allowed_results(topology: Topology, command_type: str) -> frozenset[str]:
    """The event types a handler of `command_type` may answer with."""
    forbidden = _forbidden(topology)
    found = {r for s in senders(topology, command_type) for r in s.results}
    if not found and _is_notification(topology, command_type):
        found = {
            name
            for name, spec in topology.events.items()
            if any(
                topology.handlers[r].produces in spec.all_topics
                for r in _roles(topology, command_type)
            )
        }
    return frozenset(found - forbidden)


def check_result(topology: Topology, command_type: str, result_type: str) -> str | None:
    """None if a handler of `command_type` may answer `result_type`; else why not, as a
    sentence that names what it may answer."""
    allowed = allowed_results(topology, command_type)
    if result_type in allowed:
        return None
    what = "a result of another step"
    if result_type in ENGINE_EVENTS or result_type == ATTEMPT_FAILED:
        what = "an engine event (outcomes, signals and timers are the orchestrator's)"
    elif result_type in _commands(topology):
        what = "a command"
    return (
        f"a handler of {command_type} answered {result_type}, {what}; it may answer "
        f"{', '.join(sorted(allowed)) or 'nothing'} (or raise sagastream.Fail)"
    )


def check_function(
    function: Callable[..., Any], commands: Iterable[str], topology: Topology
) -> None:
    """At registration: the function's declared return type (if any) must be results it may
    send. For one command, every type of the annotation must answer it; for a role's function
    (several commands), each type must answer one of them. Raises ContractError."""
    commands = tuple(commands)
    declared = _declared_results(function)
    if declared is None:
        return
    allowed: set[str] = set()
    for command in commands:
        allowed |= allowed_results(topology, command)
    wrong = [name for name in declared if name not in allowed]
    if wrong:
        name = f"{function.__module__}.{getattr(function, '__qualname__', function)}"
        raise ContractError(
            f"{name} declares it returns {' | '.join(wrong)}, which {', '.join(commands)} cannot "
            f"be answered with: its results are {', '.join(sorted(allowed)) or 'none'} "
            "(topology.yaml: the success and failure events of the steps that send it). "
            "Fix the return annotation, or the step's success/failure in topology.yaml"
        )


@dataclass(frozen=True)
class AttemptError:
    """Why an attempt failed, as the StepAttemptFailed reports it."""

    kind: Kind
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, error: BaseException) -> AttemptError:
        """An exception from a handler's function: a broken contract (ContractError), a result
        too large to send (RecordTooLarge), else kind exception."""
        from sagastream.runtime.limits import RecordTooLarge

        if isinstance(error, ContractError):
            return cls.of("contract", error)
        if isinstance(error, RecordTooLarge):
            return cls.of("too_large", error)
        return cls.of("exception", error)

    @classmethod
    def of(cls, kind: Kind, error: BaseException | str) -> AttemptError:
        if isinstance(error, str):
            return cls(kind, "ContractError" if kind == "contract" else kind, error)
        return cls(kind, type(error).__name__, str(error) or type(error).__name__)


def attempt_failed(
    topology: Topology, command_type: str, record: dict[str, Any], error: AttemptError
) -> Result:
    """The StepAttemptFailed that answers a command whose attempt failed. Its step is the
    command's meta.step when set, else the first step or compensation that sends it."""
    meta = record.get("meta") or {}
    found = senders(topology, command_type)
    named = [s for s in found if s.step == meta.get("step")] or list(found)
    sender = named[0] if named else Sender("", "", False, ())
    return ATTEMPT_FAILED, {
        "saga_type": sender.saga,
        "step": sender.step,
        "kind": error.kind,
        "error_type": error.error_type,
        "message": error.message[:MESSAGE_MAX_CHARS],
        "compensation": sender.compensation,
    }


def reports_failures(topology: Topology, command_type: str) -> bool:
    """Whether a failed attempt of `command_type` is reported: it is sent by a step (not only a
    notification) and the topology declares StepAttemptFailed."""
    return ATTEMPT_FAILED in topology.events and bool(senders(topology, command_type))


class Contract:
    """One topology's handler contract; what each command may answer is worked out once."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._results: dict[str, frozenset[str]] = {}

    def results(self, command_type: str) -> frozenset[str]:
        """The event types a handler of `command_type` may answer with."""
        found = self._results.get(command_type)
        if found is None:
            found = self._results[command_type] = allowed_results(self.topology, command_type)
        return found

    def check_result(self, command_type: str, result_type: str) -> str | None:
        """None if allowed, else why not (see check_result)."""
        if result_type in self.results(command_type):
            return None
        return check_result(self.topology, command_type, result_type)

    def check_function(self, function: Callable[..., Any], commands: Iterable[str]) -> None:
        check_function(function, commands, self.topology)

    def attempt_failed(
        self, command_type: str, record: dict[str, Any], error: AttemptError
    ) -> Result:
        return attempt_failed(self.topology, command_type, record, error)

    def reports_failures(self, command_type: str) -> bool:
        return reports_failures(self.topology, command_type)


# The running attempt's heartbeat: set by whoever runs a handler (the loop, the kit) around
# each call; a plain function's thread runs in a copy of the caller's context.
HEARTBEAT: ContextVar[Callable[[], None] | None] = ContextVar("sagastream_heartbeat", default=None)


def heartbeat() -> None:
    """Say the running attempt is alive: its run-time bound (the step's timeout_ms) starts
    again from now. Long handlers call it as they make progress (`sagastream.heartbeat()` or
    `ctx.heartbeat()`); outside a handler it does nothing. The orchestrator still waits at most
    the step's schedule_to_close_ms for an answer: raise it for handlers that run long."""
    beat = HEARTBEAT.get()
    if beat is not None:
        beat()


# -------------------------------------------------------------------------- helpers


def _declared_results(function: Callable[..., Any]) -> list[str] | None:
    """The event names of the function's return annotation; None when it declares nothing we
    can check (no annotation, sagastream.Event itself, Any)."""
    from sagastream.events import Event

    try:
        hint = typing.get_type_hints(function).get("return")
    except Exception:  # an annotation that does not resolve: Python reports it when called
        return None
    if hint is None:
        return None
    members = typing.get_args(hint) if _is_union(hint) else (hint,)
    names = []
    for member in members:
        if member is type(None):
            names.append("None")
        elif not isinstance(member, type) or member is Event or not issubclass(member, Event):
            return None
        else:
            names.append(member.__name__)
    return names


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _forbidden(topology: Topology) -> set[str]:
    """What no handler may send: engine events, the failed-attempt report, commands."""
    return {*ENGINE_EVENTS, ATTEMPT_FAILED, *_commands(topology)}


def _commands(topology: Topology) -> set[str]:
    found = set()
    for saga in topology.sagas.values():
        for step in saga.steps.values():
            found |= {step.command} if step.command else set()
            found |= {step.compensation.command} if step.compensation else set()
        if saga.notify is not None:
            found.add(saga.notify.command)
    return found


def _is_notification(topology: Topology, command_type: str) -> bool:
    return any(s.notify and s.notify.command == command_type for s in topology.sagas.values())


def _roles(topology: Topology, command_type: str) -> list[str]:
    """The handler roles that consume `command_type`."""
    spec = topology.events.get(command_type)
    if spec is None:
        return []
    return [r for r, h in topology.handlers.items() if h.consumes in spec.all_topics]
