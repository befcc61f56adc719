"""The base of every error sagastream raises on purpose: `sagastream.SagastreamError`.

An expected error (a bad topology, a broker that refuses, a saga that does not exist) is a
subclass of SagastreamError; the CLI prints it as one line and exits 2. Anything else that
escapes is a bug: the CLI shows its traceback. Subclasses keep the built-in base they had
(ValueError, RuntimeError), so code that caught those still does.
"""

from __future__ import annotations


class SagastreamError(Exception):
    """An error sagastream expects and explains: its message says what, where and what to do."""


class UsageError(SagastreamError, ValueError):
    """An argument, option or setting that cannot work as given."""


class ClusterError(SagastreamError, RuntimeError):
    """The brokers are not as the command needs them: a topic missing, a group still active."""


class NotAuthorized(ClusterError):
    """The brokers refused an operation to this principal: the message names the principal,
    the operation and the resource, and `sagastream acls` prints what the role needs."""


class NotFound(SagastreamError, KeyError):
    """Something named does not exist: a schema, an event type, a saga."""

    def __str__(self) -> str:  # the message, without the quotes KeyError adds
        return str(self.args[0]) if self.args else ""


class SchemaError(SagastreamError, ValueError):
    """A schema file that cannot be read as an Avro record schema."""


class ModelError(SagastreamError, TypeError):
    """An event model whose fields do not map to Avro."""
