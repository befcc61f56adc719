"""`when:` conditions: a restricted Python expression over the start event and step results.

`start.priority == 'high' and not payment.flagged` is parsed once, checked against a small
grammar (and, or, not, comparisons, `<source>.<field>`, constants) and turned into closures, so
evaluating it per saga costs no parsing and can run nothing but comparisons.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sagastream.errors import SagastreamError

Data = Mapping[str, Mapping[str, Any]]
_Node = Callable[[Data], Any]

GRAMMAR = (
    "a condition is made of and, or, not, comparisons (==, !=, <, <=, >, >=, in, not in), "
    "<source>.<field> and constants"
)
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


# the constants a condition may hold: what event data can be compared with (no bytes, no ...)
_LITERALS = (str, int, float, bool, type(None))


class ConditionError(SagastreamError, ValueError):
    """A `when:` text outside the grammar; the message says which part and why."""


@dataclass(frozen=True, eq=False)
class Condition:
    """A compiled `when:`; call it with the saga's data ({source: {field: value}})."""

    text: str
    references: tuple[tuple[str, str], ...]  # (source, field), in order of appearance
    _evaluate: _Node

    def __call__(self, data: Data) -> bool:
        return bool(self._evaluate(data))


def compile_condition(text: str) -> Condition:
    """Parse and compile a `when:` text; raises ConditionError."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConditionError(f"not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError):  # the parser's own limits on nesting
        raise ConditionError(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    if _depth(tree.body) > MAX_DEPTH:
        # a condition is evaluated by nested calls: bound them where the file is read, not
        # where a saga first meets it
        raise ConditionError(f"nested too deeply (more than {MAX_DEPTH} levels)")
    references: list[tuple[str, str]] = []
    evaluate = _compile(tree.body, references)
    return Condition(text, tuple(dict.fromkeys(references)), evaluate)


MAX_DEPTH = 64  # levels of syntax (and/or/not, comparisons, fields) a `when:` may nest


def _depth(node: ast.AST) -> int:
    """How deeply an expression nests, without recursing (its depth is what is in doubt)."""
    deepest, todo = 0, [(node, 1)]
    while todo:
        current, depth = todo.pop()
        deepest = max(deepest, depth)
        todo += [(child, depth + 1) for child in ast.iter_child_nodes(current)]
    return deepest


def _compile(node: ast.expr, references: list[tuple[str, str]]) -> _Node:
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, references) for v in node.values]
        return _all(parts) if isinstance(node.op, ast.And) else _any(parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, references)
        return lambda data: not inner(data)
    if isinstance(node, ast.Compare):
        first = _compile(node.left, references)
        ops = [_comparison(op) for op in node.ops]
        rest = [_compile(c, references) for c in node.comparators]
        return _compare(first, list(zip(ops, rest, strict=True)))
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and isinstance(node.ctx, ast.Load)
    ):
        references.append((node.value.id, node.attr))
        return _field(node.value.id, node.attr)
    value = _constant(node)
    return lambda data: value


def _comparison(op: ast.cmpop) -> Callable[[Any, Any], bool]:
    """The function of a comparison of the grammar; `is` and `is not` are none."""
    found = _COMPARE.get(type(op))
    if found is None:
        text = "is not" if isinstance(op, ast.IsNot) else "is"
        raise ConditionError(f"'{text}' is not allowed: {GRAMMAR}")
    return found


def _constant(node: ast.expr) -> Any:
    """A literal: a constant (text, number, boolean, None), a negative number, or a list or
    tuple of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, _LITERALS):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        return -node.operand.value
    if isinstance(node, ast.List | ast.Tuple):
        items = [_constant(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    raise ConditionError(f"'{ast.unparse(node)}' is not allowed: {GRAMMAR}")


def _field(source: str, name: str) -> _Node:
    def get(data: Data) -> Any:
        values = data.get(source)
        return None if values is None else values.get(name)

    return get


def _all(parts: list[_Node]) -> _Node:
    def evaluate(data: Data) -> Any:
        value: Any = True
        for part in parts:
            value = part(data)
            if not value:
                return value
        return value

    return evaluate


def _any(parts: list[_Node]) -> _Node:
    def evaluate(data: Data) -> Any:
        value: Any = False
        for part in parts:
            value = part(data)
            if value:
                return value
        return value

    return evaluate


def _compare(first: _Node, chain: list[tuple[Callable[[Any, Any], bool], _Node]]) -> _Node:
    def evaluate(data: Data) -> bool:
        left = first(data)
        for op, node in chain:
            right = node(data)
            try:
                if not op(left, right):
                    return False
            except TypeError:
                # a skipped step's field is None, and None > 0 has no answer: not met
                return False
            left = right
        return True

    return evaluate
