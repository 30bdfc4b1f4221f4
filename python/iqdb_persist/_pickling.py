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


def _reduce_config(config):
    if config.path.startswith("rados:"):
        raise TypeError(f"a rados:// PersistConfig ({config.path}) holds a connected RADOS client and cannot be "
                        "pickled: pass its path and keywords, and make the config in the process that uses it")
    return _persist_config, (config.path, {k: getattr(config, k) for k in _CONFIG_KEYWORDS})


_native.FsyncPolicy.__reduce__ = lambda p: (_fsync_policy, (p.mode, p.interval_ms))
_native.Compression.__reduce__ = lambda c: (_compression, (c.kind, c.level, c.threads))
_native.PersistConfig.__reduce__ = _reduce_config
