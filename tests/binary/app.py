"""The document-vault saga's events and services: payloads that JSON cannot carry.

A filed document (bytes, a fixed-size digest, a decimal fee) is sealed, then archived with its
seal; the start event's `note` is read by no step, so the saga state must not keep it.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import sagastream
from sagastream.events import AvroType

Fee = Annotated[
    bytes, AvroType({"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2})
]
Digest = Annotated[bytes, AvroType({"type": "fixed", "name": "Digest", "size": 8})]

app = sagastream.App()


class DocumentFiled(sagastream.Event):
    """A document to keep; starts the vault saga."""

    doc_id: str
    blob: bytes
    digest: Digest
    fee: Fee
    note: str = ""


class SealDocument(sagastream.Command):
    doc_id: str
    blob: bytes
    digest: bytes
    fee: Fee


class DocumentSealed(sagastream.Event):
    doc_id: str
    seal: bytes


class ArchiveDocument(sagastream.Command):
    doc_id: str
    blob: bytes
    seal: bytes
    fee: Fee


class DocumentArchived(sagastream.Event):
    doc_id: str


def seal_of(blob: bytes, digest: bytes) -> bytes:
    """The seal of a document: bytes that are not text (a zero and 0xff on either side)."""
    return b"\x00\xff" + hashlib.sha256(blob + digest).digest()[:12] + b"\xff\x00"


@app.handler
def seal(cmd: SealDocument) -> DocumentSealed:
    return DocumentSealed(doc_id=cmd.doc_id, seal=seal_of(cmd.blob, cmd.digest))


@app.handler
def archive(cmd: ArchiveDocument) -> DocumentArchived:
    return DocumentArchived(doc_id=cmd.doc_id)
