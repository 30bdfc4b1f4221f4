"""iqdb_persist: crash-safe persistence for vector-search indexes.

Atomic, checksummed snapshots and a write-ahead log with group commit, for
an exact :class:`FlatIndex` and (when built) FAISS and hnswlib indexes.
numpy float32 arrays go in without copies where their layout allows; the
GIL is released during file I/O, fsyncs, loads, saves and a persisted index's searches.

    import numpy as np, iqdb_persist as iq
    cfg = iq.PersistConfig("vectors.iqdb", wal_enabled=True)
    with iq.PersistedIndex.open_with(iq.FlatIndex(128, "cosine"), cfg) as db:
        db.insert(np.arange(1000, dtype=np.uint64), np.random.rand(1000, 128).astype(np.float32))
        ids, distances = db.search(np.ones(128, np.float32), k=10)

``PersistConfig("rados://POOL/NAME", ...)`` puts the index in a Ceph RADOS
pool instead (when ``HAVE_RADOS``). See docs/PYTHON.md. The command-line tool is the C++ ``iqdb-persist``.
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
    ForkedError,
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

from . import _pickling  # noqa: F401,E402  (FsyncPolicy, Compression, PersistConfig become picklable)

__version__ = _native.__version__

Metric = _native.Metric
FsyncPolicy = _native.FsyncPolicy
Compression = _native.Compression
PersistConfig = _native.PersistConfig
WalStats = _native.WalStats
WriteBatch = _native.WriteBatch
FlatIndex = _native.FlatIndex
PersistedFlatIndex = _native.PersistedFlatIndex
ReplicaLag = _native.ReplicaLag
ReplicaStats = _native.ReplicaStats
FlatReadReplica = _native.FlatReadReplica
snapshot_index_type = _native.snapshot_index_type

# index class -> persisted class, and the snapshot header's index type -> persisted class
_PERSISTED = {FlatIndex: PersistedFlatIndex}
_BY_TYPE = {"flat": PersistedFlatIndex}
# the same for the read-replica classes
_REPLICA = {FlatIndex: FlatReadReplica}
_REPLICA_BY_TYPE = {"flat": FlatReadReplica}

HAVE_HNSWLIB = hasattr(_native, "HnswlibIndex")
HAVE_FAISS = hasattr(_native, "FaissIndex")
# PersistConfig("rados://POOL/NAME", ...) works (docs/PYTHON.md, "RADOS")
HAVE_RADOS = bool(_native.HAVE_RADOS)
if HAVE_HNSWLIB:
    HnswlibIndex = _native.HnswlibIndex
    PersistedHnswlibIndex = _native.PersistedHnswlibIndex
    HnswlibReadReplica = _native.HnswlibReadReplica
    _PERSISTED[HnswlibIndex] = PersistedHnswlibIndex
    _BY_TYPE["hnswlib"] = PersistedHnswlibIndex
    _REPLICA[HnswlibIndex] = HnswlibReadReplica
    _REPLICA_BY_TYPE["hnswlib"] = HnswlibReadReplica
if HAVE_FAISS:
    FaissIndex = _native.FaissIndex
    PersistedFaissIndex = _native.PersistedFaissIndex
    FaissReadReplica = _native.FaissReadReplica
    _PERSISTED[FaissIndex] = PersistedFaissIndex
    _BY_TYPE["faiss"] = PersistedFaissIndex
    _REPLICA[FaissIndex] = FaissReadReplica
    _REPLICA_BY_TYPE["faiss"] = FaissReadReplica


class PersistedIndex:
    """Factory of the persisted index classes (PersistedFlatIndex, ...)."""

    @staticmethod
    def open_with(index, config: PersistConfig):
        """Wrap an in-memory index (moved in). With the WAL: lock, base snapshot, empty log.

        With the WAL an index at the path holding data (log records, vectors) is
        replaced only with discard_log=True; else WouldLoseWritesError."""
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
        return _class_for(config, index_type, _PERSISTED, _BY_TYPE).load(config)


class ReadReplica:
    """Factory of the read-replica classes (FlatReadReplica, ...)."""

    @staticmethod
    def open(config: PersistConfig, index_type: Optional[Type] = None):
        """A read-only replica of the index at config.path that follows its writer's log.

        Loads and verifies the snapshot and replays the log; takes no lock
        and writes nothing. index_type: FlatIndex, HnswlibIndex or
        FaissIndex; by default the type the snapshot's header names.
        """
        return _class_for(config, index_type, _REPLICA, _REPLICA_BY_TYPE).open(config)


def _class_for(config: PersistConfig, index_type: Optional[Type], by_index: dict, by_type: dict):
    """The class in by_index for index_type, else the one by_type names for the snapshot's header."""
    if index_type is not None:
        if index_type not in by_index:
            raise TypeError(f"unknown index type {index_type!r}")
        return by_index[index_type]
    name = snapshot_index_type(config)
    if name not in by_type:
        err = UnsupportedError(f"snapshot {config.path} holds a '{name}' index, which this build does not bind")
        err.path = config.path
        raise err
    return by_type[name]

open_with = PersistedIndex.open_with
load = PersistedIndex.load
open_replica = ReadReplica.open
