"""iqdb_persist: crash-safe persistence for vector-search indexes.

Atomic, checksummed snapshots and a write-ahead log with group commit, for
an exact :class:`FlatIndex` and (when built) FAISS and hnswlib indexes.
numpy float32 arrays go in without copies where their layout allows; the
GIL is released during file I/O, fsyncs, loads, saves and searches.

    import numpy as np, iqdb_persist as iq
    cfg = iq.PersistConfig("vectors.iqdb", wal_enabled=True)
    with iq.PersistedIndex.open_with(iq.FlatIndex(128, "cosine"), cfg) as db:
        db.insert(np.arange(1000, dtype=np.uint64), np.random.rand(1000, 128).astype(np.float32))
        ids, distances = db.search(np.ones(128, np.float32), k=10)

See docs/PYTHON.md. The command-line tool is the C++ ``iqdb-persist``.
"""

from __future__ import annotations

from typing import Optional, Type

from . import _iqdb_persist as _native
from ._errors import (  # noqa: F401  (re-exported)
    BadMagicError,
    ChecksumMismatchError,
    CompressionError,
    CorruptedError,
    CorruptLogError,
    DuplicateIdError,
    FencedError,
    IdNotFoundError,
    InvalidArgumentError,
    InvalidHeaderError,
    InvalidIndexTypeError,
    InvalidMetricError,
    InvalidPayloadError,
    IoError,
    LockedError,
    PersistError,
    PoisonedError,
    TruncatedHeaderError,
    TruncatedPayloadError,
    UnsupportedError,
    UnsupportedVersionError,
    WouldLoseWritesError,
)

__version__ = _native.__version__

Metric = _native.Metric
FsyncPolicy = _native.FsyncPolicy
Compression = _native.Compression
PersistConfig = _native.PersistConfig
WalStats = _native.WalStats
WriteBatch = _native.WriteBatch
FlatIndex = _native.FlatIndex
PersistedFlatIndex = _native.PersistedFlatIndex
snapshot_index_type = _native.snapshot_index_type

# index class -> persisted class, and the snapshot header's index type -> persisted class
_PERSISTED = {FlatIndex: PersistedFlatIndex}
_BY_TYPE = {"flat": PersistedFlatIndex}

HAVE_HNSWLIB = hasattr(_native, "HnswlibIndex")
HAVE_FAISS = hasattr(_native, "FaissIndex")
if HAVE_HNSWLIB:
    HnswlibIndex = _native.HnswlibIndex
    PersistedHnswlibIndex = _native.PersistedHnswlibIndex
    _PERSISTED[HnswlibIndex] = PersistedHnswlibIndex
    _BY_TYPE["hnswlib"] = PersistedHnswlibIndex
if HAVE_FAISS:
    FaissIndex = _native.FaissIndex
    PersistedFaissIndex = _native.PersistedFaissIndex
    _PERSISTED[FaissIndex] = PersistedFaissIndex
    _BY_TYPE["faiss"] = PersistedFaissIndex


class PersistedIndex:
    """Factory of the persisted index classes (PersistedFlatIndex, ...)."""

    @staticmethod
    def open_with(index, config: PersistConfig):
        """Wrap an in-memory index (moved in). With the WAL: lock, base snapshot, empty log."""
        try:
            cls = _PERSISTED[type(index)]
        except KeyError:
            raise TypeError(f"cannot persist a {type(index).__name__}: expected one of "
                            + ", ".join(c.__name__ for c in _PERSISTED)) from None
        return cls.open_with(index, config)

    @staticmethod
    def load(config: PersistConfig, index_type: Optional[Type] = None):
        """Load and verify the snapshot at config.path (replaying the log).

        index_type: FlatIndex, HnswlibIndex or FaissIndex; by default the
        type the snapshot's header names.
        """
        if index_type is not None:
            if index_type not in _PERSISTED:
                raise TypeError(f"unknown index type {index_type!r}")
            return _PERSISTED[index_type].load(config)
        name = snapshot_index_type(config.path)
        if name not in _BY_TYPE:
            raise UnsupportedError(f"snapshot {config.path} holds a '{name}' index, which this build does not bind")
        return _BY_TYPE[name].load(config)


open_with = PersistedIndex.open_with
load = PersistedIndex.load
