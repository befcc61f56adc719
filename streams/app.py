"""A project's handler functions, registered by command type or by role, and how a worker runs them.

    app = sagastream.App()

    @app.handler                       # the command type comes from the annotation
    async def book_flight(cmd: BookFlight, ctx: sagastream.Context) -> FlightBooked:
        if not seats_left(cmd.flight):
            raise sagastream.Fail("sold out")   # the step's failure event, with this reason
        return FlightBooked(trip_id=cmd.trip_id, booking_ref=book(cmd, ctx.idempotency_key))

    @app.handler(role="hotel")         # every command of the role that has no function of its own
    def hotels(cmd: sagastream.Command, ctx: sagastream.Context) -> sagastream.Event: ...

Async functions run on the handler loop's event loop; plain functions on its pool of threads.
What a function may return is the handler contract (sagastream.runtime.contract): the success
or failure events of the steps that send its command, checked against the return annotation at
start and against each result at run time. An exception, a wrong result or a run past the
step's timeout_ms fails the attempt, which the orchestrator retries by the step's policy.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast, get_type_hints, overload

from sagastream.core.topology import Topology
from sagastream.errors import SagastreamError
from sagastream.events import Command, Event, Record, model_named
from sagastream.runtime.contract import Contract, ContractError, heartbeat

Result = tuple[str, dict[str, Any]]
HandlerFunction = Callable[..., Any]


@dataclass(frozen=True)
class Context:
    """What a handler knows about a command besides its fields."""

    command_type: str
    idempotency_key: str
    attempt: int
    saga_key: str
    event_id: str
    correlation_id: str
    role: str

    def heartbeat(self) -> None:
        """Say this attempt is alive: its run-time bound (the step's timeout_ms) starts again
        from now. Call it as a long handler makes progress; the same as sagastream.heartbeat()."""
        heartbeat()


class Fail(Exception):  # noqa: N818 - it reads as what the handler does: `raise Fail("sold out")`
    """A business failure: answered with the step's failure event, carrying `reason`.

    Fields the failure event shares with the command (the saga key, say) are copied from it;
    `fields` adds or overrides others; `event` picks one of several failure events.
    """

    def __init__(self, reason: str, *, event: str | None = None, **fields: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event = event
        self.fields = fields


class AppError(SagastreamError, ValueError):
    """An app that cannot run a role: unknown role, missing functions, a bad registration."""


class App:
    """The registry of a project's handler functions."""

    def __init__(self) -> None:
        self._by_command: dict[str, HandlerFunction] = {}
        self._by_role: dict[str, HandlerFunction] = {}
        self._startup: list[Callable[[Any], None]] = []

    @overload
    def handler(self, function: HandlerFunction, /) -> HandlerFunction: ...

    @overload
    def handler(
        self, command: type[Command] | str | None = None, /, *, role: str | None = None
    ) -> Callable[[HandlerFunction], HandlerFunction]: ...

    def handler(
        self,
        target: HandlerFunction | type[Command] | str | None = None,
        /,
        *,
        role: str | None = None,
    ) -> Any:
        """Register a function for a command type (given, or read from the first parameter's
        annotation) or, with `role=`, for every command of a role without a function of its own."""
        if callable(target) and not isinstance(target, type):
            return self._register(target, None, None)

        def register(function: HandlerFunction) -> HandlerFunction:
            command = target if isinstance(target, str) else None
            if isinstance(target, type):
                command = target.__name__
            return self._register(function, command, role)

        return register

    def on_startup(self, function: Callable[[Any], None]) -> Callable[[Any], None]:
        """Run `function(settings)` in each worker process before it consumes (open pools...)."""
        self._startup.append(function)
        return function

    def start(self, settings: Any) -> None:
        """Called by the worker once, before its handler roles consume."""
        for function in self._startup:
            function(settings)

    def functions(self) -> dict[str, str]:
        """What is registered: 'command X' or 'role Y' -> the function's qualified name."""
        found = {f"command {c}": _name(f) for c, f in self._by_command.items()}
        found.update({f"role {r}": _name(f) for r, f in self._by_role.items()})
        return found

    def role_handler(self, role: str, topology: Topology) -> RoleHandler:
        """The callable a handler loop runs for `role`; fails at start if a command has no
        function, naming what exists."""
        if role not in topology.handlers:
            raise AppError(
                f"no handler role {role!r} in the topology; roles: "
                f"{', '.join(topology.handlers) or 'none'}"
            )
        consumes = topology.handlers[role].consumes
        commands = [
            name
            for name, spec in topology.events.items()
            if consumes in spec.all_topics and _is_command(topology, name)
        ]
        contract = Contract(topology)
        bound: dict[str, _Bound] = {}
        missing = []
        for command in commands:
            function = self._by_command.get(command) or self._by_role.get(role)
            if function is None:
                missing.append(command)
                continue
            bound[command] = _bind(function, command, role, contract)
        if missing:
            raise AppError(
                f"handler role {role!r}: no function for {', '.join(missing)}; registered: "
                f"{', '.join(f'{k} ({v})' for k, v in self.functions().items()) or 'nothing'}. "
                "Register one with @app.handler (by command type) or @app.handler(role=...)"
            )
        # a role's function answers several commands: each declared type must answer one
        for function in {id(b.function): b.function for b in bound.values()}.values():
            contract.check_function(
                function, [c for c, b in bound.items() if b.function is function]
            )
        return RoleHandler(role, bound)

    def _register(
        self, function: HandlerFunction, command: str | None, role: str | None
    ) -> HandlerFunction:
        if role is not None:
            if role in self._by_role:
                raise AppError(f"role {role!r} already has {_name(self._by_role[role])}")
            self._by_role[role] = function
            return function
        if command is None:
            command = _annotated_command(function)
        if command in self._by_command:
            raise AppError(f"command {command} already has {_name(self._by_command[command])}")
        self._by_command[command] = function
        return function


class RoleHandler:
    """One role's functions as the handler loop calls them: (command type, record) -> result."""

    def __init__(self, role: str, bound: dict[str, _Bound]) -> None:
        self.role = role
        self._bound = bound
        self.commands = frozenset(bound)

    def is_async(self, command_type: str) -> bool:
        return self._bound[command_type].is_async

    def __call__(self, command_type: str, record: dict[str, Any]) -> Result | Awaitable[Result]:
        bound = self._bound[command_type]
        command, ctx = bound.inputs(record)
        if bound.is_async:
            return self._await(bound, command, ctx)
        try:
            return bound.answer(bound.call(command, ctx))
        except Fail as failed:
            return bound.failure(failed, command)

    async def _await(self, bound: _Bound, command: Command, ctx: Context) -> Result:
        try:
            return bound.answer(await bound.call(command, ctx))
        except Fail as failed:
            return bound.failure(failed, command)


@dataclass(frozen=True)
class _Bound:
    """A function bound to one command type: its model, arity and failure events."""

    function: HandlerFunction
    command_type: str
    role: str
    model: type[Command]
    takes_context: bool
    is_async: bool
    failures: tuple[str, ...]
    contract: Contract

    def inputs(self, record: dict[str, Any]) -> tuple[Command, Context]:
        meta = record["meta"]
        command = self.model.from_record(record)
        ctx = Context(
            self.command_type,
            record.get("idempotency_key", ""),
            meta.get("attempt", 1),
            meta["saga_key"],
            meta["event_id"],
            meta["correlation_id"],
            self.role,
        )
        return command, ctx

    def call(self, command: Command, ctx: Context) -> Any:
        return self.function(command, ctx) if self.takes_context else self.function(command)

    def answer(self, result: Any) -> Result:
        """The function's result, if the contract lets it answer this command; else
        ContractError, which fails the attempt (kind contract)."""
        if not isinstance(result, Event):
            raise ContractError(
                f"{_name(self.function)} returned {type(result).__name__}, not an event; "
                f"return the step's result event or raise sagastream.Fail(reason)"
            )
        why = self.contract.check_result(self.command_type, type(result).__name__)
        if why is not None:
            raise ContractError(f"{_name(self.function)}: {why}")
        return type(result).__name__, result.fields()

    def failure(self, failed: Fail, command: Command) -> Result:
        if not self.failures:
            raise AppError(
                f"{_name(self.function)} raised Fail({failed.reason!r}), but no step that "
                f"sends {self.command_type} declares a failure event"
            )
        event = failed.event or self.failures[0]
        if event not in self.failures:
            raise AppError(
                f"Fail(event={event!r}) from {_name(self.function)}: {self.command_type}'s "
                f"failure events are {', '.join(self.failures)}"
            )
        model = model_named(event)
        shared = {k: v for k, v in command.fields().items() if k in model.model_fields}
        if "step" in model.model_fields and "step" not in shared:
            shared["step"] = self.command_type
        fields = {**shared, "reason": failed.reason, **failed.fields}
        return event, model.model_validate(fields).fields()


def load_app(module: str) -> App:
    """The App of `module` (its attribute `app`), or of `module:attribute`."""
    name, _, attribute = module.partition(":")
    try:
        loaded = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise AppError(
            f"cannot import the app module {name!r} ({exc}); is its folder the working "
            "directory or on PYTHONPATH?"
        ) from exc
    if attribute:
        found = getattr(loaded, attribute, None)
    else:
        apps = [v for v in vars(loaded).values() if isinstance(v, App)]
        found = apps[0] if len(apps) == 1 else getattr(loaded, "app", None)
    if not isinstance(found, App):
        raise AppError(
            f"module {name!r} has no sagastream.App{f' named {attribute!r}' if attribute else ''}; "
            "define `app = sagastream.App()` there, or name it as module:attribute"
        )
    return found


def _is_command(topology: Topology, event_type: str) -> bool:
    """Whether some saga sends `event_type` to a handler (a step, undo or notify command)."""
    for saga in topology.sagas.values():
        for step in saga.steps.values():
            if event_type == step.command or (
                step.compensation and event_type == step.compensation.command
            ):
                return True
        if saga.notify and saga.notify.command == event_type:
            return True
    return False


def _failures(topology: Topology, command: str) -> tuple[str, ...]:
    found: list[str] = []
    for saga in topology.sagas.values():
        for step in saga.steps.values():
            if step.command == command:
                found += [f for f in step.failure if f not in found]
            if step.compensation and step.compensation.command == command:
                found += [f for f in step.compensation.failure if f not in found]
    return tuple(found)


def _bind(function: HandlerFunction, command: str, role: str, contract: Contract) -> _Bound:
    params = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not 1 <= len(params) <= 2:
        raise AppError(f"{_name(function)} must take (command) or (command, ctx)")
    try:
        model = model_named(command)
    except KeyError:
        raise AppError(
            f"no event model named {command}: define `class {command}(sagastream.Command)` in "
            "the app's package"
        ) from None
    if not issubclass(model, Record):
        raise AppError(f"{command} is not an event model")
    return _Bound(
        function,
        command,
        role,
        cast(type[Command], model),
        len(params) == 2,
        inspect.iscoroutinefunction(function),
        _failures(contract.topology, command),
        contract,
    )


def _annotated_command(function: HandlerFunction) -> str:
    params = list(inspect.signature(function).parameters)
    hints = get_type_hints(function) if params else {}
    model = hints.get(params[0]) if params else None
    if not (isinstance(model, type) and issubclass(model, Event)):
        raise AppError(
            f"{_name(function)}: annotate its first parameter with the command's model "
            "(def f(cmd: BookFlight, ctx)), or register it as @app.handler(BookFlight)"
        )
    return model.__name__


def _name(function: HandlerFunction) -> str:
    return f"{function.__module__}.{getattr(function, '__qualname__', function)}"
