"""The exceptions of iqdb_persist: one class per PersistError kind.

Every failure the C++ library reports arrives as an instance of
:class:`PersistError` (or a subclass), with attributes ``kind`` (the C++
ErrorKind's stable name, e.g. ``"checksum_mismatch"``), ``path`` (the file,
or None), ``offset`` (byte offset of the damage, or None) and ``errno``
(``io`` errors). Groups worth catching: :class:`CorruptedError` (every kind
that means damaged bytes), :class:`InvalidArgumentError` (also a
``ValueError``), :class:`IdNotFoundError` (also a ``KeyError``).
"""

from __future__ import annotations

from typing import Optional


class PersistError(Exception):
    """Base class of every error iqdb-persist reports."""

    kind: str = ""
    path: Optional[str] = None
    offset: Optional[int] = None
    errno: Optional[int] = None


class CorruptedError(PersistError):
    """A file is damaged: bad magic, checksum, truncation, bad header/payload/log."""


class IoError(PersistError, OSError):
    """A system call failed (``errno`` says which error)."""


class BadMagicError(CorruptedError):
    """The file does not start with the iQDB magic."""


class UnsupportedVersionError(PersistError):
    """A format version this build does not read."""


class ChecksumMismatchError(CorruptedError):
    """The stored CRC differs from the computed one."""


class TruncatedHeaderError(CorruptedError):
    """The file ends inside its header."""


class TruncatedPayloadError(CorruptedError):
    """The file or the decoded payload ends too early."""


class InvalidMetricError(CorruptedError):
    """A metric tag outside 0..4."""


class InvalidIndexTypeError(PersistError):
    """The snapshot holds another index type."""


class InvalidHeaderError(CorruptedError):
    """A header field is out of range or inconsistent."""


class InvalidPayloadError(CorruptedError):
    """The payload is structurally wrong."""


class CompressionError(CorruptedError):
    """Compressing or decompressing failed."""


class UnsupportedError(PersistError):
    """A feature this build or index does not support."""


class LockedError(PersistError):
    """Another writer holds the index open."""


class InvalidArgumentError(PersistError, ValueError):
    """The caller passed something invalid (wrong dimension, bad config)."""


class DuplicateIdError(PersistError, ValueError):
    """Insert of an id that is already present."""


class IdNotFoundError(PersistError, KeyError):
    """Erase of an id that is not present."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class CorruptLogError(CorruptedError):
    """The write-ahead log is damaged in the middle, or records are missing."""


class PoisonedError(PersistError):
    """An earlier durability failure makes further writes unsafe: reopen."""


class WouldLoseWritesError(PersistError):
    """A save without the WAL would replace acknowledged writes."""


class FencedError(PersistError):
    """A newer writer took over."""


class ForkedError(PersistError):
    """The index was opened by the parent of this process (os.fork()): a
    child reads through it but never writes, syncs or checkpoints."""


_BY_KIND = {
    "io": IoError,
    "bad_magic": BadMagicError,
    "unsupported_version": UnsupportedVersionError,
    "checksum_mismatch": ChecksumMismatchError,
    "truncated_header": TruncatedHeaderError,
    "truncated_payload": TruncatedPayloadError,
    "invalid_metric": InvalidMetricError,
    "invalid_index_type": InvalidIndexTypeError,
    "invalid_header": InvalidHeaderError,
    "invalid_payload": InvalidPayloadError,
    "compression": CompressionError,
    "unsupported": UnsupportedError,
    "locked": LockedError,
    "invalid_argument": InvalidArgumentError,
    "duplicate_id": DuplicateIdError,
    "id_not_found": IdNotFoundError,
    "corrupt_log": CorruptLogError,
    "poisoned": PoisonedError,
    "would_lose_writes": WouldLoseWritesError,
    "fenced": FencedError,
    "forked": ForkedError,
}


def error_class(kind: str) -> type:
    """The exception class for a C++ ErrorKind name (PersistError if unknown)."""
    return _BY_KIND.get(kind, PersistError)


# Each class knows its kind, so that an error raised in Python (not
# translated from C++) has the right one too.
for _kind, _cls in _BY_KIND.items():
    _cls.kind = _kind
del _kind, _cls
