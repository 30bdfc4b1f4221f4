"""Pickling the configuration (FsyncPolicy, Compression, a local
PersistConfig), so that it goes to multiprocessing's "spawn" workers as any
argument does: each pickles as a call of its public factory, so an
unpickled object equals the original and is checked as one made by hand."""

import multiprocessing
import pickle

import numpy as np
import pytest

import iqdb_persist as iq
from conftest import rows, wal_config

DIM = 8

POLICIES = [iq.FsyncPolicy.always(), iq.FsyncPolicy.periodic(250), iq.FsyncPolicy.never()]
COMPRESSIONS = [iq.Compression.none(), iq.Compression.lz4(), iq.Compression.zstd(), iq.Compression.zstd(19, 2)]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_fsync_policies_round_trip(policy):
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(policy, proto))
        assert back == policy and (back.mode, back.interval_ms) == (policy.mode, policy.interval_ms)


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=repr)
def test_compressions_round_trip(compression):
    back = pickle.loads(pickle.dumps(compression))
    assert back == compression and (back.kind, back.level, back.threads) == (
        compression.kind, compression.level, compression.threads)


def fields(c):
    return (c.path, c.wal_enabled, c.fsync_policy, c.compression, c.commit_spin_us, c.discard_log,
            c.checkpoint_log_bytes, c.map_snapshot, c.max_payload_bytes, c.max_expansion_ratio)


def test_a_local_config_round_trips_with_every_keyword(tmp_path):
    default = iq.PersistConfig(str(tmp_path / "a.iqdb"))
    every = iq.PersistConfig(str(tmp_path / "b.iqdb"), wal_enabled=True, fsync_policy=iq.FsyncPolicy.periodic(7),
                             compression=iq.Compression.zstd(5), commit_spin_us=3, discard_log=True,
                             checkpoint_log_bytes=1 << 20, map_snapshot=True, max_payload_bytes=1 << 30,
                             max_expansion_ratio=9)
    for c in (default, every):
        back = pickle.loads(pickle.dumps(c))
        assert fields(back) == fields(c) and repr(back) == repr(c)
    assert fields(pickle.loads(pickle.dumps(every)))[1:] == (True, iq.FsyncPolicy.periodic(7), iq.Compression.zstd(5),
                                                             3, True, 1 << 20, True, 1 << 30, 9)


def test_an_unpickled_config_is_checked_as_one_made_by_hand(tmp_path):
    # A pickle is a call of the factory: a state no factory accepts is refused by it.
    bad_policy = pickle.dumps(iq.FsyncPolicy.periodic(5)).replace(b"periodic", b"sometime")
    with pytest.raises(ValueError, match="sometime"):
        pickle.loads(bad_policy)
    c = iq.PersistConfig(str(tmp_path / "c.iqdb"), commit_spin_us=5)
    func, (path, kw) = c.__reduce__()
    with pytest.raises(ValueError, match="commit_spin_us"):
        func(path, dict(kw, commit_spin_us=-1))
    with pytest.raises(TypeError):
        func(path, dict(kw, no_such_keyword=1))


def test_a_subclass_is_refused_rather_than_pickled_as_its_base(tmp_path):
    class Mine(iq.PersistConfig):
        pass

    mine = Mine(str(tmp_path / "m.iqdb"))
    mine.extra = 1
    with pytest.raises(TypeError, match="subclass of PersistConfig"):
        pickle.dumps(mine)


def load_and_search(config, query):
    """In a spawned worker: load the index from the config alone."""
    db = iq.load(config)
    try:
        ids, _ = db.search(query, 1)
        return len(db), int(ids[0]), db.wal_stats().recovered_records
    finally:
        db.close()


def test_a_spawned_worker_loads_the_index_from_a_pickled_config(path):
    data = rows(50, DIM)
    cfg = wal_config(path, fsync_policy=iq.FsyncPolicy.always())
    db = iq.open_with(iq.FlatIndex(DIM), cfg)
    db.insert(list(range(50)), data)
    db.close()
    reader = iq.PersistConfig(path)  # no WAL: a reader, no lock
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        size, nearest, recovered = pool.apply(load_and_search, (reader, data[17]))
    assert (size, nearest) == (50, 17)
    assert recovered == 50  # the records were in the log, replayed read-only by the worker
    np.testing.assert_array_equal(iq.load(reader).get(17), data[17])
