"""Round trips for every index type, metric, compression and id kind; search
against an independent numpy brute-force model (FlatIndex)."""

import time

import numpy as np
import pytest

import iqdb_persist as iq
from conftest import rows, wal_config

COMPRESSIONS = [iq.Compression.none(), iq.Compression.zstd(3), iq.Compression.lz4(), iq.Compression.zstd(3, threads=2)]
COMPRESSION_IDS = ["none", "zstd", "lz4", "zstd-2-threads"]


def model_distances(metric, data, q):
    """The distances docs/API.md defines (FlatIndex), in float64."""
    a = data.astype(np.float64)
    q = q.astype(np.float64)
    if metric == iq.Metric.Euclidean:
        return np.sqrt(((a - q) ** 2).sum(axis=1))
    if metric == iq.Metric.Manhattan:
        return np.abs(a - q).sum(axis=1)
    if metric == iq.Metric.DotProduct:
        return -(a @ q)
    if metric == iq.Metric.Hamming:
        return (a != q).sum(axis=1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms == 0, 1.0, 1.0 - (a @ q) / np.where(norms == 0, 1, norms))


def check_search(db, metric, data, ids, queries, k):
    got_ids, got_d = db.search(queries, k)
    assert got_ids.shape == (len(queries), k) and got_d.dtype == np.float32
    for qi, q in enumerate(queries):
        d = model_distances(metric, data, q)
        order = np.argsort(d, kind="stable")[:k]  # ties: storage order
        np.testing.assert_allclose(got_d[qi], d[order], rtol=1e-4, atol=1e-4)
        expect = [ids[i] for i in order]
        for j in range(k):
            # ids must agree except between distances the float32 sums cannot tell apart
            if got_ids[qi][j] != expect[j]:
                assert abs(d[order[j]] - got_d[qi][j]) < 1e-4
    one_ids, one_d = db.search(queries[0], k)
    assert one_ids.shape == (k,) and list(one_ids) == list(got_ids[0])


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=COMPRESSION_IDS)
@pytest.mark.parametrize("metric", list(iq.Metric.__members__.values()))
@pytest.mark.parametrize("wal", [False, True], ids=["snapshot", "wal"])
def test_flat_round_trip_every_metric_compression(path, metric, compression, wal):
    dim, n = 16, 120
    data = rows(n, dim, seed=int(metric.value))
    if metric == iq.Metric.Hamming:
        data = np.round(data).clip(-1, 1).astype(np.float32)
    ids = np.arange(1000, 1000 + n, dtype=np.uint64)
    cfg = iq.PersistConfig(path, wal_enabled=wal, compression=compression)
    with iq.PersistedIndex.open_with(iq.FlatIndex(dim, metric), cfg) as db:
        db.insert(ids[:100], data[:100])                 # one batch
        for i in range(100, n):                          # single inserts
            db.insert(int(ids[i]), data[i], {"i": i, "s": str(i), "f": i / 2, "b": i % 2 == 0, "n": None})
        db.save()
    again = iq.PersistedIndex.load(cfg)
    assert isinstance(again, iq.PersistedFlatIndex)
    assert len(again) == n and again.dim == dim and again.metric == metric
    for i in (0, 99, 100, n - 1):
        assert np.array_equal(again.get(int(ids[i])).view(np.uint32), data[i].view(np.uint32))
    assert again.metadata(int(ids[0])) is None
    assert again.metadata(int(ids[110])) == {"i": 110, "s": "110", "f": 55.0, "b": True, "n": None}
    check_search(again, metric, data, [int(i) for i in ids], rows(5, dim, seed=99), k=7)
    again.close()


@pytest.mark.parametrize("wal", [False, True], ids=["snapshot", "wal"])
def test_bytes_and_int_ids_round_trip(path, wal):
    dim = 8
    data = rows(6, dim)
    ids = [b"alpha", 7, b"\x00\xff", 2**64 - 1, b"x" * 300, 0]
    cfg = iq.PersistConfig(path, wal_enabled=wal)
    db = iq.PersistedIndex.open_with(iq.FlatIndex(dim, "euclidean"), cfg)
    db.insert(ids[:3], data[:3], [{"k": "v"}, None, {"z": 1}])
    for i in range(3, 6):
        db.insert(ids[i], data[i])
    db.save()
    db.close()
    again = iq.load(cfg)
    assert len(again) == 6
    for i, id_ in enumerate(ids):
        assert id_ in again
        assert np.array_equal(again.get(id_), data[i])
    assert b"beta" not in again and 8 not in again
    assert again.metadata(b"alpha") == {"k": "v"} and again.metadata(b"\x00\xff") == {"z": 1}
    got, dist = again.search(data[0], 6)
    assert got.dtype == object and got[0] == b"alpha" and dist[0] == 0
    got, dist = again.search(data[0], 8)  # more than there are: every id, once
    assert sorted(got, key=repr) == sorted(ids, key=repr)
    check_search(again, iq.Metric.Euclidean, data, ids, data[:2], k=6)


def test_numpy_scalars_are_ids_and_metadata(path):
    """What indexing a numpy array gives (numpy integers, floats, bools) is
    taken as the int, float or bool it stands for: ids from an ids array or
    from search() go back into get / metadata / erase / in."""
    dim = 4
    data = rows(5, dim)
    ids = np.array([3, 2**64 - 1, 0, 41, 7], dtype=np.uint64)
    cfg = iq.PersistConfig(path, wal_enabled=True)
    with iq.open_with(iq.FlatIndex(dim), cfg) as db:
        for j, i in enumerate(ids):  # numpy.uint64 scalars
            meta = {"n": np.int32(-j), "x": np.float32(0.1), "b": np.bool_(j % 2 == 0), "w": np.int64(2**62)}
            db.insert(i, data[j], meta)
        db.insert(np.arange(100, 103, dtype=np.int64).tolist(), rows(3, dim, seed=2))  # python ints
        db.insert(np.int16(9), data[0])  # a signed numpy integer
        hit_ids, _ = db.search(data[3], 2)
        assert hit_ids.dtype == np.uint64 and hit_ids[0] == 41
        first = hit_ids[0]  # numpy.uint64
        assert first in db and np.array_equal(db.get(first), data[3])
        meta = db.metadata(first)
        assert meta == {"n": -3, "x": float(np.float32(0.1)), "b": False, "w": 2**62}
        assert type(meta["n"]) is int and type(meta["x"]) is float and type(meta["b"]) is bool
        db.erase(np.int64(7))
        for bad, exc in [(np.bool_(True), TypeError), (np.int64(-1), ValueError), (np.float32(3), TypeError)]:
            before = (db.last_lsn, len(db))
            with pytest.raises(exc):
                db.insert(bad, data[0])
            assert (db.last_lsn, len(db)) == before
        with pytest.raises(ValueError):  # above int64: refused like a Python int
            db.insert(np.uint32(50), data[0], {"k": np.uint64(2**63)})
        assert 50 not in db
    again = iq.load(cfg)
    assert len(again) == 8 and 7 not in again and np.uint64(2**64 - 1) in again and 9 in again
    assert again.metadata(np.uint8(0)) == {"n": -2, "x": float(np.float32(0.1)), "b": True, "w": 2**62}


def test_search_ids_insert_as_a_batch(tmp_path):
    """search()'s ids, uint64 or (with a bytes id) object, are a batch's ids."""
    data = rows(3, 4)
    with iq.open_with(iq.FlatIndex(4), iq.PersistConfig(str(tmp_path / "a.iqdb"))) as a:
        a.insert([b"k", 5, b"\x00"], data)
        ids, _ = a.search(data[0], 3)
        assert ids.dtype == object
    with iq.open_with(iq.FlatIndex(4), iq.PersistConfig(str(tmp_path / "b.iqdb"))) as b:
        b.insert(ids, data)
        assert len(b) == 3 and all(np.array_equal(b.get(i), data[j]) for j, i in enumerate(ids))
        with pytest.raises(TypeError):
            b.insert(np.array([b"x", 1.5, b"y"], dtype=object), data)
        with pytest.raises(TypeError):
            b.insert(np.array([[b"x"], [b"y"], [b"z"]], dtype=object), data)
        assert len(b) == 3


def test_erase_and_write_batch_round_trip(path):
    cfg = iq.PersistConfig(path, wal_enabled=True)
    data = rows(10, 4)
    with iq.open_with(iq.FlatIndex(4), cfg) as db:
        db.insert(np.arange(10, dtype=np.uint64), data)
        b = iq.WriteBatch().erase(3).erase(4).insert(b"new", data[0], {"x": 1.5})
        assert len(b) == 3
        db.write(b)
        db.erase(5)
        assert db.last_lsn == 14
    again = iq.load(cfg)
    assert len(again) == 8 and 3 not in again and 5 not in again and b"new" in again
    assert again.metadata(b"new") == {"x": 1.5}


def test_search_pads_rows_when_k_exceeds_size(path):
    with iq.open_with(iq.FlatIndex(4), iq.PersistConfig(path)) as db:
        db.insert([1, 2], rows(2, 4))
        ids, d = db.search(rows(3, 4, seed=1), 5)
        assert ids.shape == (3, 2)  # every query found both
        ids, d = db.search(rows(1, 4, seed=1)[0], 1)
        assert ids.shape == (1,)


@pytest.mark.skipif(not iq.HAVE_HNSWLIB, reason="hnswlib adapter not built")
@pytest.mark.parametrize("compression", COMPRESSIONS, ids=COMPRESSION_IDS)
@pytest.mark.parametrize("metric", ["euclidean", "dotproduct", "cosine"])
def test_hnswlib_round_trip(path, metric, compression):
    dim, n = 16, 300
    data = rows(n, dim, seed=3)
    cfg = iq.PersistConfig(path, wal_enabled=True, compression=compression)
    with iq.open_with(iq.HnswlibIndex(dim, metric, M=8, ef=64), cfg) as db:
        db.insert(np.arange(n, dtype=np.uint64), data)
        db.insert(n, data[0], {"dup_of": 0})
        before_ids, before_d = db.search(data[:10], 5)
    again = iq.load(cfg)
    assert isinstance(again, iq.PersistedHnswlibIndex)
    assert len(again) == n + 1 and again.metadata(n) == {"dup_of": 0}
    after_ids, after_d = again.search(data[:10], 5)
    # the same graph answers the same queries the same way
    assert np.array_equal(before_ids, after_ids) and np.array_equal(before_d, after_d)
    if metric != "dotproduct":  # under inner product a vector need not be its own nearest
        assert set(after_ids[:, :2].ravel()) >= set(range(1, 10))


@pytest.mark.skipif(not iq.HAVE_FAISS, reason="FAISS adapter not built")
@pytest.mark.parametrize("compression", COMPRESSIONS, ids=COMPRESSION_IDS)
@pytest.mark.parametrize("metric", ["euclidean", "dotproduct", "manhattan", "cosine"])
def test_faiss_round_trip(path, metric, compression):
    dim, n = 16, 200
    data = rows(n, dim, seed=4)
    cfg = iq.PersistConfig(path, wal_enabled=True, compression=compression)
    ids = np.arange(10, 10 + n, dtype=np.uint64)
    with iq.open_with(iq.FaissIndex.from_factory(dim, "IDMap2,Flat", metric), cfg) as db:
        db.insert(ids, data)
        db.erase(10)
        before = db.search(data[:5], 4)
    again = iq.load(cfg)
    assert isinstance(again, iq.PersistedFaissIndex) and len(again) == n - 1 and 10 not in again
    after = again.search(data[:5], 4)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert list(after[0][1:, 0]) == [11, 12, 13, 14]  # exact index: each row finds itself


@pytest.mark.skipif(not iq.HAVE_FAISS, reason="FAISS adapter not built")
def test_faiss_index_from_python_faiss(path):
    faiss = pytest.importorskip("faiss")
    dim = 8
    data = rows(50, dim, seed=5)
    f = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
    f.add_with_ids(data, np.arange(50, dtype=np.int64) * 2)
    ix = iq.FaissIndex.from_serialized(faiss.serialize_index(f).tobytes())
    assert len(ix) == 50
    cfg = iq.PersistConfig(path, wal_enabled=True)
    with iq.open_with(ix, cfg) as db:
        db.insert(1001, data[0])
    again = iq.load(cfg)
    ids, d = again.search(data[3], 1)
    fd, fi = f.search(data[3:4], 1)
    assert ids[0] == fi[0][0] == 6 and d[0] == pytest.approx(fd[0][0])
    assert len(again) == 51
    # The bytes are read as hostile, as a snapshot's are: an IDMap2 whose
    # header claims 2**44 more vectors (faiss.deserialize_index itself loops
    # over them for minutes), cut short, or followed by more bytes.
    good = faiss.serialize_index(f).tobytes()
    crafted = bytearray(good)
    crafted[13] ^= 0x10
    with pytest.raises(iq.InvalidPayloadError):
        iq.FaissIndex.from_serialized(bytes(crafted))
    with pytest.raises(iq.CorruptedError):
        iq.FaissIndex.from_serialized(good[:-3])
    with pytest.raises(iq.InvalidPayloadError):
        iq.FaissIndex.from_serialized(good + b"\0")


def test_compression_threads_are_checked(tmp_path):
    c = iq.Compression.zstd(5, threads=3)
    assert (c.kind, c.level, c.threads) == ("zstd", 5, 3)
    assert iq.Compression.zstd().threads == 1
    data = rows(10, 4)
    for bad in (0, 17):
        cfg = iq.PersistConfig(str(tmp_path / "t.iqdb"), compression=iq.Compression.zstd(3, threads=bad))
        with pytest.raises(iq.InvalidArgumentError):
            iq.open_with(iq.FlatIndex(4, "euclidean"), cfg)
    assert not (tmp_path / "t.iqdb").exists()
    cfg = iq.PersistConfig(str(tmp_path / "t.iqdb"), compression=iq.Compression.zstd(3, threads=16))
    with iq.open_with(iq.FlatIndex(4, "euclidean"), cfg) as db:
        db.insert(np.arange(10, dtype=np.uint64), data)
        db.save()
    with iq.PersistedFlatIndex.load(cfg) as db:
        assert len(db) == 10
        np.testing.assert_array_equal(db.get(7), data[7])


def log_frames_bytes(path):
    """The log's header and frames, from its file: the zero-filled space it
    is grown into ahead is not counted (it starts with a zero frame length)."""
    data = open(str(path) + ".wal", "rb").read()
    at = data.find(b"\0" * 64, 64)
    return len(data) if at < 0 else at


def test_automatic_checkpoints_keep_the_log_bounded(path):
    bound = 16 << 10
    n = 2000
    vectors = rows(n, 8)
    with iq.open_with(iq.FlatIndex(8), wal_config(path, checkpoint_log_bytes=bound)) as db:
        for i in range(n):
            db.insert(i, vectors[i])
        # The last inserts may have reached the bound: that checkpoint runs.
        deadline = time.monotonic() + 20
        while log_frames_bytes(path) >= bound and time.monotonic() < deadline:
            time.sleep(0.002)
        stats = db.wal_stats()
        assert stats.auto_checkpoints >= 3 and stats.auto_checkpoint_failures == 0
        assert db.auto_checkpoint_failure() is None
        assert log_frames_bytes(path) < bound
    with iq.load(wal_config(path, map_snapshot=True)) as again:
        # Fewer records replayed than a bound of frames (each is over 40 bytes).
        assert again.wal_stats().recovered_records * 40 < bound
        assert len(again) == n
        for i in (0, 777, n - 1):
            assert np.array_equal(again.get(i), vectors[i])
        again.insert(n, vectors[0])  # a mapped load takes writes (copy on write)
        assert np.array_equal(again.get(0), vectors[0])
