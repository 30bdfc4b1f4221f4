"""Pickling of the configuration objects: FsyncPolicy, Compression and a
local PersistConfig, so that they go to the workers of multiprocessing's
"spawn" and "forkserver" start methods (and concurrent.futures) as any
argument does. Each pickles as a call of its public factory, so an
unpickled object is checked exactly as one made by hand.

A rados:// PersistConfig holds a connected client: it refuses to be
pickled (TypeError); make one in the process that uses it. Indexes are not
picklable: a worker loads the index from its config."""

from __future__ import annotations

from . import _iqdb_persist as _native

# The keywords of PersistConfig that a local config's pickle carries.
_CONFIG_KEYWORDS = ("wal_enabled", "fsync_policy", "compression", "commit_spin_us", "discard_log",
                    "checkpoint_log_bytes", "map_snapshot", "max_payload_bytes", "max_expansion_ratio")


def _fsync_policy(mode: str, interval_ms: int):
    if mode == "periodic":
        return _native.FsyncPolicy.periodic(interval_ms)
    if mode == "always":
        return _native.FsyncPolicy.always()
    if mode == "never":
        return _native.FsyncPolicy.never()
    raise ValueError(f"unknown fsync policy {mode!r}")


def _compression(kind: str, level: int, threads: int):
    if kind == "zstd":
        return _native.Compression.zstd(level, threads)
    if kind == "lz4":
        return _native.Compression.lz4()
    if kind == "none":
        return _native.Compression.none()
    raise ValueError(f"unknown compression {kind!r}")


def _persist_config(path: str, keywords: dict):
    return _native.PersistConfig(path, **keywords)


def _exact(obj, cls):
    # A subclass would come back as cls, without its own state: refused.
    if type(obj) is not cls:
        raise TypeError(f"cannot pickle a {type(obj).__name__}, a subclass of {cls.__name__}: define its own __reduce__")


def _reduce_config(config):
    _exact(config, _native.PersistConfig)
    if config.path.startswith("rados:"):
        raise TypeError(f"a rados:// PersistConfig ({config.path}) holds a connected RADOS client and cannot be "
                        "pickled: pass its path and keywords, and make the config in the process that uses it")
    return _persist_config, (config.path, {k: getattr(config, k) for k in _CONFIG_KEYWORDS})


def _reduce_policy(policy):
    _exact(policy, _native.FsyncPolicy)
    return _fsync_policy, (policy.mode, policy.interval_ms)


def _reduce_compression(compression):
    _exact(compression, _native.Compression)
    return _compression, (compression.kind, compression.level, compression.threads)


_native.FsyncPolicy.__reduce__ = _reduce_policy
_native.Compression.__reduce__ = _reduce_compression
_native.PersistConfig.__reduce__ = _reduce_config
