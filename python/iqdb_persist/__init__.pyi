# Type stubs of iqdb_persist (docs/PYTHON.md).
from __future__ import annotations

import enum
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union, overload

import numpy as np
import numpy.typing as npt

from ._errors import (
    BadMagicError as BadMagicError,
    ChecksumMismatchError as ChecksumMismatchError,
    CompressionError as CompressionError,
    CorruptedError as CorruptedError,
    CorruptLogError as CorruptLogError,
    DuplicateIdError as DuplicateIdError,
    FencedError as FencedError,
    ForkedError as ForkedError,
    IdNotFoundError as IdNotFoundError,
    InvalidArgumentError as InvalidArgumentError,
    InvalidHeaderError as InvalidHeaderError,
    InvalidIndexTypeError as InvalidIndexTypeError,
    InvalidMetricError as InvalidMetricError,
    InvalidPayloadError as InvalidPayloadError,
    IoError as IoError,
    LockedError as LockedError,
    PersistError as PersistError,
    PoisonedError as PoisonedError,
    TruncatedHeaderError as TruncatedHeaderError,
    TruncatedPayloadError as TruncatedPayloadError,
    UnsupportedError as UnsupportedError,
    UnsupportedVersionError as UnsupportedVersionError,
    WouldLoseWritesError as WouldLoseWritesError,
)

__version__: str
HAVE_HNSWLIB: bool
HAVE_FAISS: bool
HAVE_RADOS: bool  # PersistConfig takes rados://POOL/NAME paths

Id = Union[int, np.integer[Any], bytes]
MetadataValue = Union[str, int, float, bool, np.integer[Any], np.floating[Any], np.bool_, None]
Metadata = Dict[str, MetadataValue]
Vector = npt.NDArray[np.float32]
Ids = Union[npt.NDArray[np.integer[Any]], npt.NDArray[np.object_], Sequence[Id]]
MetricLike = Union["Metric", str]
SearchResult = Tuple[np.ndarray, npt.NDArray[np.float32]]

class Metric(enum.Enum):
    Cosine: int
    DotProduct: int
    Euclidean: int
    Manhattan: int
    Hamming: int

class FsyncPolicy:
    @staticmethod
    def always() -> FsyncPolicy: ...
    @staticmethod
    def periodic(interval_ms: int) -> FsyncPolicy: ...
    @staticmethod
    def never() -> FsyncPolicy: ...
    @property
    def mode(self) -> str: ...
    @property
    def interval_ms(self) -> int: ...

class Compression:
    @staticmethod
    def none() -> Compression: ...
    @staticmethod
    def zstd(level: int = 3, threads: int = 1) -> Compression: ...
    @staticmethod
    def lz4() -> Compression: ...
    @property
    def kind(self) -> str: ...
    @property
    def level(self) -> int: ...
    @property
    def threads(self) -> int: ...

class PersistConfig:
    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        wal_enabled: bool = False,
        fsync_policy: FsyncPolicy = ...,  # FsyncPolicy.always()
        compression: Compression = ...,  # Compression.none()
        commit_spin_us: int = 500,
        discard_log: bool = False,
        checkpoint_log_bytes: int = 0,
        map_snapshot: bool = False,
        max_payload_bytes: int = 1 << 40,
        max_expansion_ratio: int = 4096,
        # rados://POOL/NAME paths only (None: the C++ default, in the comment)
        ceph_conf: Optional[str] = None,  # $CEPH_CONF, then Ceph's search
        client_id: Optional[str] = None,  # "admin"
        op_timeout_s: Optional[int] = None,  # 30
        connect_timeout_s: Optional[int] = None,  # 10
        lock_lease_s: Optional[int] = None,  # 30
        take_over: Optional[bool] = None,  # False
        take_over_timeout_s: Optional[int] = None,  # 0: 2 * lease + 30
        blocklist_previous: Optional[bool] = None,  # True
        reader_grace_s: Optional[int] = None,  # 0
    ) -> None: ...
    @property
    def path(self) -> str: ...
    wal_enabled: bool
    fsync_policy: FsyncPolicy
    compression: Compression
    commit_spin_us: int
    discard_log: bool
    checkpoint_log_bytes: int
    map_snapshot: bool
    max_payload_bytes: int
    max_expansion_ratio: int

class WalStats:
    commits: int
    records: int
    log_syncs: int
    auto_checkpoints: int
    auto_checkpoint_failures: int
    recovered_records: int
    torn_tail_bytes: int
    unsynced_frames_dropped: int
    migrated_v1_log: bool

class WriteBatch:
    def __init__(self) -> None: ...
    def insert(self, id: Union[Id, Ids], vector: Vector, metadata: Any = None) -> WriteBatch: ...
    def erase(self, id: Id) -> WriteBatch: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...

class _Index:
    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> Metric: ...
    def __len__(self) -> int: ...
    def __contains__(self, id: Id) -> bool: ...
    def insert(self, id: Id, vector: Vector, metadata: Optional[Metadata] = None) -> None: ...
    def search(self, query: Vector, k: int) -> SearchResult: ...

class FlatIndex(_Index):
    def __init__(self, dim: int, metric: MetricLike = ...) -> None: ...

class HnswlibIndex(_Index):
    def __init__(self, dim: int, metric: MetricLike = ..., *, M: int = 16, ef_construction: int = 200,
                 ef: int = 10, random_seed: int = 100, initial_capacity: int = 0) -> None: ...

class FaissIndex(_Index):
    @staticmethod
    def from_factory(dim: int, description: str, metric: MetricLike = ...) -> FaissIndex: ...
    @staticmethod
    def from_serialized(data: bytes, cosine: bool = False) -> FaissIndex: ...

class _Reads:
    """What persisted indexes and read replicas share (reads.hpp)."""
    def search(self, query: Vector, k: int) -> SearchResult: ...
    def metadata(self, id: Id) -> Optional[Metadata]: ...
    def close(self) -> None: ...
    @property
    def last_lsn(self) -> int: ...
    def failure(self) -> Optional[str]: ...
    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> Metric: ...
    @property
    def path(self) -> str: ...
    def __len__(self) -> int: ...
    def __contains__(self, id: Id) -> bool: ...
    def __enter__(self: Any) -> Any: ...
    def __exit__(self, *exc: Any) -> bool: ...

class _Persisted(_Reads):
    def insert(self, id: Union[Id, Ids], vector: Vector,
               metadata: Union[Metadata, Sequence[Optional[Metadata]], None] = None) -> None: ...
    def erase(self, id: Id) -> None: ...
    def write(self, batch: WriteBatch) -> None: ...
    def save(self) -> None: ...
    def checkpoint(self) -> None: ...
    def sync(self) -> None: ...
    def wal_stats(self) -> WalStats: ...
    def auto_checkpoint_failure(self) -> Optional[str]: ...

class PersistedFlatIndex(_Persisted):
    @staticmethod
    def open_with(index: FlatIndex, config: PersistConfig) -> PersistedFlatIndex: ...
    @staticmethod
    def load(config: PersistConfig) -> PersistedFlatIndex: ...
    def get(self, id: Id) -> Optional[Vector]: ...

class PersistedHnswlibIndex(_Persisted):
    @staticmethod
    def open_with(index: HnswlibIndex, config: PersistConfig) -> PersistedHnswlibIndex: ...
    @staticmethod
    def load(config: PersistConfig) -> PersistedHnswlibIndex: ...

class PersistedFaissIndex(_Persisted):
    @staticmethod
    def open_with(index: FaissIndex, config: PersistConfig) -> PersistedFaissIndex: ...
    @staticmethod
    def load(config: PersistConfig) -> PersistedFaissIndex: ...

AnyPersisted = Union[PersistedFlatIndex, PersistedHnswlibIndex, PersistedFaissIndex]

class ReplicaLag:
    applied_lsn: int
    available_lsn: int
    records_behind: int
    fresh_as_of: float  # seconds on time.monotonic()'s clock
    time_behind: float  # seconds

class ReplicaStats:
    catch_ups: int
    records_applied: int
    reloads: int
    load: WalStats

class _Replica(_Reads):
    def catch_up(self) -> int: ...
    def start_following(self, interval_ms: int) -> None: ...
    def stop_following(self) -> None: ...
    def lag(self) -> ReplicaLag: ...
    def stats(self) -> ReplicaStats: ...

class FlatReadReplica(_Replica):
    @staticmethod
    def open(config: PersistConfig) -> FlatReadReplica: ...
    def promote(self) -> PersistedFlatIndex: ...
    def get(self, id: Id) -> Optional[Vector]: ...

class HnswlibReadReplica(_Replica):
    @staticmethod
    def open(config: PersistConfig) -> HnswlibReadReplica: ...
    def promote(self) -> PersistedHnswlibIndex: ...

class FaissReadReplica(_Replica):
    @staticmethod
    def open(config: PersistConfig) -> FaissReadReplica: ...
    def promote(self) -> PersistedFaissIndex: ...

AnyReplica = Union[FlatReadReplica, HnswlibReadReplica, FaissReadReplica]

class PersistedIndex:
    @staticmethod
    def open_with(index: Union[FlatIndex, HnswlibIndex, FaissIndex], config: PersistConfig) -> AnyPersisted: ...
    @staticmethod
    def load(config: PersistConfig, index_type: Optional[Type[Any]] = None) -> AnyPersisted: ...

class ReadReplica:
    @staticmethod
    def open(config: PersistConfig, index_type: Optional[Type[Any]] = None) -> AnyReplica: ...

def open_with(index: Union[FlatIndex, HnswlibIndex, FaissIndex], config: PersistConfig) -> AnyPersisted: ...
def load(config: PersistConfig, index_type: Optional[Type[Any]] = None) -> AnyPersisted: ...
def open_replica(config: PersistConfig, index_type: Optional[Type[Any]] = None) -> AnyReplica: ...
@overload
def snapshot_index_type(config: PersistConfig) -> str: ...
@overload
def snapshot_index_type(path: Union[str, os.PathLike[str]]) -> str: ...
