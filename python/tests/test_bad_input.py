"""Hostile input from a Python caller: the right exception, nothing logged,
the index unchanged. Damaged files and a locked index: the typed errors."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import iqdb_persist as iq
from conftest import rows, wal_config

DIM = 8


@pytest.fixture
def db(path):
    d = iq.open_with(iq.FlatIndex(DIM), wal_config(path))
    d.insert([1, 2, 3], rows(3, DIM))
    yield d
    d.close()


def unchanged(db, f, exc):
    before = (db.last_lsn, len(db), db.wal_stats().records)
    with pytest.raises(exc) as info:
        f()
    assert (db.last_lsn, len(db), db.wal_stats().records) == before
    return info.value


@pytest.mark.parametrize("bad, exc, words", [
    (np.zeros(DIM, np.float64), TypeError, "float32"),
    (np.zeros(DIM, np.int32), TypeError, "float32"),
    (np.zeros(DIM, ">f4"), TypeError, "float32"),
    ([0.0] * DIM, TypeError, "numpy"),
    (np.zeros(DIM + 1, np.float32), ValueError, f"({DIM},)"),
    (np.zeros((1, 1, DIM), np.float32), ValueError, "shape"),
    (np.zeros(2 * DIM, np.float32)[::2], ValueError, "C-contiguous"),
])
def test_bad_single_vector(db, bad, exc, words):
    e = unchanged(db, lambda: db.insert(10, bad), exc)
    assert words in str(e)


@pytest.mark.parametrize("ids, vectors, exc", [
    (np.arange(3, dtype=np.uint64) + 10, rows(3, DIM).astype(np.float64), TypeError),
    (np.arange(3, dtype=np.uint64) + 10, rows(3, DIM + 1), ValueError),
    (np.arange(3, dtype=np.uint64) + 10, np.asfortranarray(rows(3, DIM)), ValueError),
    (np.arange(3, dtype=np.uint64) + 10, rows(3, 2 * DIM)[:, ::2], ValueError),
    (np.arange(2, dtype=np.uint64) + 10, rows(3, DIM), ValueError),
    (np.array([10, -1, 12]), rows(3, DIM), ValueError),
    (np.array([10.0, 11.0, 12.0]), rows(3, DIM), TypeError),
    ([10, 11, 1], rows(3, DIM), iq.DuplicateIdError),      # 1 is present
    ([10, 11, 10], rows(3, DIM), iq.DuplicateIdError),     # twice in the batch
    ([10, "x", 12], rows(3, DIM), TypeError),
    ([10, b"", 12], rows(3, DIM), ValueError),
    ([10, 2**64, 12], rows(3, DIM), ValueError),
])
def test_bad_batch_logs_nothing(db, ids, vectors, exc):
    unchanged(db, lambda: db.insert(ids, vectors), exc)


@pytest.mark.parametrize("shape", [(3, DIM, 1), (1, 3, DIM), ()])
def test_vectors_of_another_rank_name_the_shapes_accepted(db, shape):
    # With an ids array, as with one id: the error is about the vectors (it
    # used to be a TypeError about the ids, the call taken for a single insert).
    vectors = np.zeros(shape, np.float32)
    for ids in (np.arange(3, dtype=np.uint64) + 10, 10):
        e = unchanged(db, lambda: db.insert(ids, vectors), ValueError)
        assert f"(dim,) for one vector or (n, dim) for a batch, not {shape}" in str(e)
        batch = iq.WriteBatch()
        with pytest.raises(ValueError, match=r"\(n, dim\) for a batch"):
            batch.insert(ids, vectors)
        assert len(batch) == 0


@pytest.mark.parametrize("meta, exc", [
    ({"k": [1]}, TypeError),
    ({1: "v"}, TypeError),
    ({"k": 2**63}, ValueError),
    ("not a dict", TypeError),
    ({"k": "\ud800"}, ValueError),
    ({"\udfff": 1}, ValueError),
])
def test_bad_metadata(db, meta, exc):
    unchanged(db, lambda: db.insert(10, rows(1, DIM)[0], meta), exc)


def test_a_metadata_float_wider_than_float64_is_taken_only_when_exact(db):
    # Metadata floats are float64: a longdouble that would be rounded is
    # refused, not narrowed without a word; one that converts exactly is kept.
    third = np.longdouble(1) / np.longdouble(3)
    if float(third) == third:
        pytest.skip("numpy.longdouble is float64 on this platform")
    e = unchanged(db, lambda: db.insert(10, rows(1, DIM)[0], {"x": third}), ValueError)
    assert "'x'" in str(e) and "rounding" in str(e)
    db.insert(10, rows(1, DIM)[0], {"x": np.longdouble(0.5), "n": np.longdouble("nan")})
    got = db.metadata(10)
    assert got["x"] == 0.5 and type(got["x"]) is float and np.isnan(got["n"])


@pytest.mark.parametrize("k, exc", [
    (True, TypeError), (np.bool_(False), TypeError), (1.0, TypeError), ("1", TypeError), (None, TypeError),
    (-1, ValueError), (np.int64(-1), ValueError),
])
def test_k_must_be_a_non_negative_int(db, k, exc):
    q = rows(1, DIM)[0]
    with pytest.raises(exc, match="k must"):
        db.search(q, k)
    standalone = iq.FlatIndex(DIM)
    standalone.insert(1, q)
    with pytest.raises(exc, match="k must"):
        standalone.search(q, k)


def test_k_beyond_any_count_gives_every_hit(db):
    q = rows(1, DIM)[0]
    for k in (np.uint64(2**64 - 1), 2**70, np.int8(100)):
        ids, _ = db.search(q, k)
        assert sorted(ids.tolist()) == [1, 2, 3]


def test_bad_batch_metadata_and_ids(db):
    unchanged(db, lambda: db.insert([10, 11], rows(2, DIM), [{"a": 1}]), ValueError)
    unchanged(db, lambda: db.insert([10, 11], rows(2, DIM), {"a": 1}), TypeError)
    unchanged(db, lambda: db.insert(True, rows(1, DIM)[0]), TypeError)
    unchanged(db, lambda: db.insert(-5, rows(1, DIM)[0]), ValueError)


def test_typed_errors_of_the_library(db):
    e = unchanged(db, lambda: db.insert(1, rows(1, DIM)[0]), iq.DuplicateIdError)
    assert e.kind == "duplicate_id" and isinstance(e, iq.PersistError) and isinstance(e, ValueError)
    e = unchanged(db, lambda: db.erase(99), iq.IdNotFoundError)
    assert isinstance(e, KeyError) and "99" in str(e)
    batch = iq.WriteBatch().insert(20, np.zeros(DIM + 1, np.float32))  # checked when written
    e = unchanged(db, lambda: db.write(batch), iq.InvalidArgumentError)
    assert e.kind == "invalid_argument"


def test_metadata_text_that_is_not_utf8_comes_back_as_surrogates(path):
    # A snapshot whose metadata holds bytes that are not UTF-8 (an index
    # used directly in C++ could store them before its insert checked)
    # loads, and Python gets them back as lone surrogates, as os.fsdecode
    # gives such bytes, instead of a UnicodeDecodeError. Made here by
    # patching a saved file: "AB" becomes b"\xff\xfe", both CRC-32s
    # (docs/FORMAT.md, version 3) recomputed with zlib.
    import struct, zlib
    db = iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path))
    db.insert(1, np.ones(DIM, np.float32), {"k": "AB-marker"})
    db.save()
    db.close()
    b = bytearray(open(path, "rb").read())
    header_len, = struct.unpack_from("<I", b, 12)
    tag_len, = struct.unpack_from("<I", b, 24)
    at = b.index(b"AB-marker", header_len)
    b[at:at + 2] = b"\xff\xfe"
    struct.pack_into("<I", b, 70 + tag_len, zlib.crc32(bytes(b[header_len:])))
    struct.pack_into("<I", b, 74 + tag_len, zlib.crc32(bytes(b[:74 + tag_len])))
    open(path, "wb").write(bytes(b))
    again = iq.load(iq.PersistConfig(path))
    assert again.metadata(1) == {"k": "\udcff\udcfe-marker"}
    assert os.fsencode(again.metadata(1)["k"]) == b"\xff\xfe-marker"
    again.close()


def test_nan_is_stored_as_given(path):
    """The C++ API stores NaN and infinities bit for bit; a NaN distance sorts last."""
    v = np.array([np.nan, 1, -np.inf, np.inf, 0, -0.0, 2, 3], np.float32)
    cfg = wal_config(path)
    with iq.open_with(iq.FlatIndex(DIM), cfg) as db:
        db.insert(1, v)
        db.insert(2, np.ones(DIM, np.float32))
        ids, d = db.search(np.ones(DIM, np.float32), 2)
        assert list(ids) == [2, 1] and np.isnan(d[1])
    again = iq.load(cfg)
    assert np.array_equal(again.get(1).view(np.uint32), v.view(np.uint32))


def test_corrupted_snapshot_is_a_typed_error(path):
    cfg = iq.PersistConfig(path)
    with iq.open_with(iq.FlatIndex(DIM), cfg) as db:
        db.insert(np.arange(50, dtype=np.uint64), rows(50, DIM))
        db.save()
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x40
    open(path, "wb").write(raw)
    with pytest.raises(iq.CorruptedError) as info:
        iq.load(cfg)
    assert isinstance(info.value, iq.ChecksumMismatchError)
    assert info.value.kind == "checksum_mismatch" and info.value.path == path
    open(path, "wb").write(b"garbage" * 10)
    with pytest.raises(iq.BadMagicError):
        iq.PersistedFlatIndex.load(cfg)
    open(path, "wb").write(raw[:30])
    with pytest.raises(iq.CorruptedError):
        iq.PersistedFlatIndex.load(cfg)
    with pytest.raises(iq.IoError) as info:
        iq.PersistedFlatIndex.load(iq.PersistConfig(path + ".missing"))
    assert info.value.errno == 2


def test_locked_index_in_another_process(path, db):
    child = textwrap.dedent(f"""
        import iqdb_persist as iq
        try:
            iq.load(iq.PersistConfig({path!r}, wal_enabled=True))
            print("opened")
        except iq.LockedError as e:
            print("locked", e.kind, e.path)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["locked", "locked", path + ".lock"], out.stderr
    assert len(db) == 3


def test_closed_index_refuses_mutations_and_moved_index_refuses_use(path):
    ix = iq.FlatIndex(DIM)
    db = iq.open_with(ix, wal_config(path))
    with pytest.raises(ValueError, match="moved"):
        len(ix)
    db.close()
    with pytest.raises(iq.PersistError):
        db.insert(1, rows(1, DIM)[0])
    assert len(db) == 0


@pytest.mark.parametrize("wal", [False, True])
def test_a_closed_index_refuses_mutations_and_saves_with_or_without_the_wal(path, wal):
    cfg = wal_config(path) if wal else iq.PersistConfig(path)
    db = iq.open_with(iq.FlatIndex(DIM), cfg)
    db.insert([1, 2], rows(2, DIM))
    db.save()
    with open(path, "rb") as f:
        saved = f.read()
    db.close()
    refused = [lambda: db.insert(3, rows(3, DIM)[2]), lambda: db.erase(1), db.save, db.checkpoint,
               lambda: db.write(iq.WriteBatch().insert(4, rows(4, DIM)[3]))]
    if wal:
        refused.append(db.sync)
    else:
        db.sync()  # nothing to sync without the WAL: it returns (docs/PYTHON.md)
    for call in refused:
        with pytest.raises(iq.InvalidArgumentError, match="closed"):
            call()
    assert len(db) == 2
    with open(path, "rb") as f:
        assert f.read() == saved
    assert len(iq.load(cfg)) == 2


def test_an_open_with_that_fails_hands_the_index_back(path, db):
    ix = iq.FlatIndex(DIM, "euclidean")
    ix.insert(7, rows(8, DIM)[7])
    with pytest.raises(iq.LockedError):
        iq.open_with(ix, wal_config(path))  # the fixture's writer holds the lock
    bad = iq.PersistConfig(path + "-2", checkpoint_log_bytes=100)  # invalid without the WAL
    with pytest.raises(iq.InvalidArgumentError):
        iq.open_with(ix, bad)
    assert len(ix) == 1 and 7 in ix
    ids, dist = ix.search(rows(8, DIM)[7], 1)
    assert ids.tolist() == [7] and dist.tolist() == [0.0]


def test_changing_a_batch_while_another_thread_writes_it_raises(path):
    """write() reads the batch with the GIL released: changing it meanwhile
    raises BufferError (it used to free the memory being logged: a crash, or
    an index that differs from its log). The probes are inserts of fresh
    ids, harmless if one lands before the write starts or after it ends."""
    import threading
    db = iq.open_with(iq.FlatIndex(64, "euclidean"), wal_config(path))
    n, probes, seen = 200_000, [], False
    for attempt in range(3):  # the write must still run when the main thread gets the GIL back
        b = iq.WriteBatch().insert(np.arange(attempt * n, (attempt + 1) * n, dtype=np.uint64),
                                   np.ones((n, 64), np.float32))
        t = threading.Thread(target=db.write, args=(b,))
        t.start()
        while t.is_alive():
            probe = 10**12 + len(probes)
            try:
                b.insert(probe, np.ones(64, np.float32))
                probes.append(probe)
            except BufferError as e:
                assert "write()" in str(e)
                seen = True
                for change in (b.clear, lambda: b.erase(0)):  # the same guard (harmless once the write ended)
                    try:
                        change()
                    except BufferError:
                        pass
        t.join()
        if seen:
            break
    assert seen, "the write always ended before the main thread could try to change the batch"
    db.close()
    again = iq.load(wal_config(path))
    assert len(again) == len(db) >= n
    assert [p in again for p in probes] == [p in db for p in probes]


def test_names_and_sizes_are_checked_as_python_sees_them():
    with pytest.raises(ValueError, match="Unicode"):
        iq.FlatIndex(DIM, "\ud800")
    if iq.HAVE_FAISS:
        with pytest.raises(ValueError, match="dim"):
            iq.FaissIndex.from_factory(2**32 + 4, "IDMap2,Flat")
        with pytest.raises(ValueError, match="NUL"):
            iq.FaissIndex.from_factory(4, "IDMap2,Flat\x00junk")


def test_errors_raised_in_python_have_their_kind():
    assert iq.UnsupportedError("x").kind == "unsupported"
    assert iq.LockedError("x").kind == "locked"
    assert iq.PersistError("x").kind == ""


def test_open_with_refuses_to_replace_an_index_holding_acknowledged_writes(path):
    # open_with with the WAL over a logged index used to replace it, every
    # acknowledged write lost: WouldLoseWritesError, no byte changed, the
    # numpy-backed index handed back; discard_log=True replaces it.
    old = rows(3, DIM, seed=1)
    with iq.open_with(iq.FlatIndex(DIM), wal_config(path)) as db:
        db.insert([1, 2, 3], old)
    files = {p: open(p, "rb").read() for p in (path, path + ".wal")}
    fresh = iq.FlatIndex(DIM)
    with pytest.raises(iq.WouldLoseWritesError, match="3 acknowledged records") as info:
        iq.open_with(fresh, wal_config(path))
    assert info.value.path == path + ".wal"
    assert {p: open(p, "rb").read() for p in files} == files
    with iq.load(wal_config(path)) as db:
        assert len(db) == 3 and all(i in db for i in (1, 2, 3))
        ids, _ = db.search(old[1], 1)
        assert ids[0] == 2
    with iq.open_with(iq.FlatIndex(DIM), wal_config(path, discard_log=True)) as db:
        db.insert(9, old[0])
    with iq.load(wal_config(path, discard_log=True)) as db:  # load ignores it
        assert len(db) == 1 and 9 in db


def test_config_keyword_arguments_have_the_cpp_defaults(path):
    c = iq.PersistConfig(path)
    assert (c.wal_enabled, c.fsync_policy.mode, c.compression.kind, c.commit_spin_us, c.discard_log) == \
        (False, "always", "none", 500, False)
    assert c.max_payload_bytes == 1 << 40 and c.max_expansion_ratio == 4096
    assert (c.checkpoint_log_bytes, c.map_snapshot) == (0, False)
    with pytest.raises(TypeError):
        iq.PersistConfig(path, True)  # keyword-only
    with pytest.raises(ValueError):
        iq.FsyncPolicy.periodic(0)
    with pytest.raises(iq.InvalidArgumentError, match="checkpoint_log_bytes"):
        iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path, checkpoint_log_bytes=1 << 20))
    with pytest.raises(TypeError):
        iq.PersistConfig(path, checkpoint_log_bytes=-1)


def test_a_bytes_id_longer_than_the_readers_accept_is_refused(path, db):
    # 1 MiB is what a snapshot's and a log's reader take: a longer id would
    # be logged and saved, then refuse to load.
    unchanged(db, lambda: db.insert(b"x" * (2**20 + 1), np.zeros(DIM, np.float32)), ValueError)
    unchanged(db, lambda: db.insert([4, b"x" * (2**20 + 1)], rows(2, DIM)), ValueError)
    db.insert(b"y" * 2**20, np.zeros(DIM, np.float32))
    db.checkpoint()
    db.close()
    again = iq.load(wal_config(path))
    assert b"y" * 2**20 in again and len(again) == 4
    again.close()


def test_a_dimension_the_reader_refuses_is_refused(path):
    with pytest.raises(iq.InvalidArgumentError, match="dimension"):
        iq.FlatIndex(2**62)


def test_bytes_like_objects_are_not_taken_for_a_batch_of_ids(db):
    for ids in (bytearray(b"\x04\x05"), memoryview(b"\x04\x05")):
        unchanged(db, lambda: db.insert(ids, rows(2, DIM)), TypeError)


def test_metadata_whose_type_checks_change_the_dict_does_not_crash():
    # Checking a value's type runs its __class__ property, which empties the
    # dict: the module walked the dict with borrowed references (SIGSEGV).
    child = textwrap.dedent("""
        import numpy as np, iqdb_persist as iq
        ix = iq.FlatIndex(4)
        d = {}
        class Evil:
            @property
            def __class__(self):
                d.clear()
                return Evil
        d["a"] = Evil()
        d["b"] = 1
        try:
            ix.insert(1, np.ones(4, np.float32), d)
            print("inserted", len(ix))
        except TypeError as e:
            print("refused", len(ix))
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "0"], out.stdout + out.stderr


def test_a_path_that_is_not_utf8_keeps_errors_typed(tmp_path):
    # A Linux file name may be any bytes; Python holds the others as lone
    # surrogates (os.fsdecode). The path and every error naming it used to
    # raise UnicodeDecodeError instead.
    path = os.fsdecode(bytes(tmp_path) + b"/db\xff.iqdb")
    db = iq.open_with(iq.FlatIndex(DIM), wal_config(path))
    assert db.path == path and wal_config(path).path == path
    assert path in repr(db) or "\\udcff" in repr(db)
    db.close()
    with pytest.raises(iq.InvalidArgumentError):
        db.insert(1, np.zeros(DIM, np.float32))
    with pytest.raises(iq.IoError) as info:
        iq.load(iq.PersistConfig(path + ".missing"))
    assert info.value.errno == 2 and info.value.path == path + ".missing"
    again = iq.load(wal_config(path))
    assert len(again) == 0 and again.path == path
    again.close()


def exits_cleanly_three_times(child):
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (out.returncode, out.stderr)
        assert out.stdout.split() == ["exiting"]


@pytest.mark.parametrize("call", ["len(db)", "db.search(q, 1)", "db.insert(next(ids), q)",
                                  "iq.open_with(iq.FlatIndex(4), iq.PersistConfig(other))"])
def test_a_daemon_thread_inside_a_call_at_exit_does_not_abort(path, call):
    # At the interpreter's exit a daemon thread still inside a call that
    # let go of the GIL is ended by pthread_exit when it takes it back: that
    # used to call std::terminate (SIGABRT) in every such run. (The last
    # case also destroys an index in the thread: a destructor lets go of the
    # GIL only while the interpreter is not finalizing.)
    child = textwrap.dedent(f"""
        import itertools, threading, time, numpy as np, iqdb_persist as iq
        # (discard_log: each of the three runs replaces the last one's index)
        db = iq.open_with(iq.FlatIndex({DIM}), iq.PersistConfig({path!r}, wal_enabled=True, discard_log=True))
        q = np.ones({DIM}, np.float32)
        ids = itertools.count()
        other = {path!r} + ".other"  # (without the WAL: no file; dropped at once, so destroyed)
        def busy():
            while True:
                {call}
        threading.Thread(target=busy, daemon=True).start()
        time.sleep(0.3)
        print("exiting")
    """)
    exits_cleanly_three_times(child)


@pytest.mark.parametrize("call", ["db.insert(1, q)", "db.erase(999)", "closed.insert(5, q)",
                                  "iq.open_replica(cfg).promote()"])
def test_a_daemon_thread_whose_call_raises_at_exit_does_not_abort(path, call):
    # The same at the interpreter's exit, for calls that raise a library
    # error: the GIL used to be taken back while the error unwound the
    # stack, and pthread_exit's unwinding started inside that one
    # (std::terminate, SIGABRT, in every run of the first three).
    child = textwrap.dedent(f"""
        import threading, time, numpy as np, iqdb_persist as iq
        cfg = iq.PersistConfig({path!r}, wal_enabled=True, discard_log=True)  # (replaces the last run's)
        db = iq.open_with(iq.FlatIndex({DIM}), cfg)
        q = np.ones({DIM}, np.float32)
        db.insert(1, q)
        closed = iq.open_with(iq.FlatIndex({DIM}), iq.PersistConfig({path!r} + ".closed", wal_enabled=True))
        closed.close()
        def busy():
            while True:
                try:
                    {call}
                except (iq.PersistError, ValueError, KeyError):
                    pass
        for _ in range(2):
            threading.Thread(target=busy, daemon=True).start()
        time.sleep(0.3)
        print("exiting")
    """)
    exits_cleanly_three_times(child)


@pytest.mark.parametrize("what", ["close", "stop_following"])
def test_two_threads_closing_or_stopping_at_once_both_return(path, what):
    # Two threads closing one index (a `with` block ending while a worker
    # closes it), or stopping one replica's follower, at once: the second
    # call used to wait for ever (both joined the same C++ thread).
    child = textwrap.dedent(f"""
        import threading, numpy as np, iqdb_persist as iq
        for rnd in range(20):
            cfg = iq.PersistConfig({path!r} + str(rnd), wal_enabled=True,
                                   fsync_policy=iq.FsyncPolicy.periodic(5), checkpoint_log_bytes=1 << 20)
            db = iq.open_with(iq.FlatIndex({DIM}), cfg)
            db.insert(rnd, np.zeros({DIM}, np.float32))
            r = iq.open_replica(cfg)
            r.start_following(1)
            call = db.close if {what!r} == "close" else r.stop_following
            bar = threading.Barrier(2)
            def go():
                bar.wait()
                call()
            ths = [threading.Thread(target=go, daemon=True) for _ in range(2)]
            for t in ths:
                t.start()
            for t in ths:
                t.join(20)
            assert not any(t.is_alive() for t in ths), "a call never returned"
            r.close()
            db.close()
        print("done")
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["done"]


def test_arrays_resized_by_the_conversion_of_other_arguments_are_read_after_it(path):
    # Converting an id or a metadata value runs Python code (__class__,
    # __index__) that can resize the vectors' array and free its memory:
    # the standalone index and WriteBatch took the array's view first and
    # stored freed memory (garbage, logged and saved). The views are taken
    # last now: the array is checked and read as it is after the conversion.
    child = textwrap.dedent(f"""
        import numpy as np, iqdb_persist as iq
        def evil(arr, shape):
            class Evil:
                @property
                def __class__(self):
                    arr.resize(shape, refcheck=False)  # frees the old buffer
                    return np.int64
                def __index__(self):
                    return 2
            return Evil()
        def attempt(f):
            try:
                return f()
            except ValueError as e:
                return "refused"
        v = np.full(4, 7.0, np.float32)
        ix = iq.FlatIndex(4)
        print(attempt(lambda: ix.insert(1, v, {{"m": evil(v, 1 << 22)}})), len(ix))
        v = np.full(4, 7.0, np.float32)
        b = iq.WriteBatch().insert(1, v, {{"m": evil(v, 1 << 22)}})  # one vector of 2**22 floats now
        db = iq.open_with(iq.FlatIndex(1 << 22), iq.PersistConfig({path!r}))
        db.write(b)
        got = db.get(1)
        print(len(got), float(got[:4].min()), float(got[:4].max()), float(got[4:].max()))
        rows = np.full((2, 4), 7.0, np.float32)
        print(attempt(lambda: iq.WriteBatch().insert([3, evil(rows, (1 << 20, 4))], rows)))
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == ["refused 0", f"{1 << 22} 7.0 7.0 0.0", "refused"], out.stdout


def test_a_batch_cannot_be_changed_while_another_thread_writes_it(path):
    # WriteBatch.insert checked for a running write() before converting its
    # arguments; a conversion that let another thread start write() of the
    # same batch then changed the batch under it (SIGSEGV). The check comes
    # after the conversion now: BufferError, or the write was over by then.
    child = textwrap.dedent(f"""
        import threading, time, numpy as np, iqdb_persist as iq
        db = iq.open_with(iq.FlatIndex(64), iq.PersistConfig({path!r}, wal_enabled=True))
        n = 1 << 17
        batch = iq.WriteBatch()
        for i in range(n):
            batch.insert(i, np.full(64, i, np.float32))
        go, started = threading.Event(), threading.Event()
        class LateId:
            @property
            def __class__(self):
                if not go.is_set():
                    go.set(); started.wait(); time.sleep(0.002)
                return np.int64
            def __index__(self):
                return 10**9
        def writer():
            go.wait(); started.set()
            db.write(batch)
        t = threading.Thread(target=writer); t.start()
        try:
            batch.insert(LateId(), np.ones(64, np.float32))
            outcome = "accepted"
        except BufferError:
            outcome = "refused"
        t.join()
        print(outcome, len(batch), len(db), 10**9 in db)
        db.close()
        again = iq.load(iq.PersistConfig({path!r}, wal_enabled=True))
        print(len(again), 10**9 in again)
    """)
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        first, second = out.stdout.splitlines()
        outcome, batch_len, db_len, present = first.split()
        n = 1 << 17
        assert (outcome, batch_len) in (("refused", str(n)), ("accepted", str(n + 1))), first
        assert (db_len, present) == (str(n), "False"), first
        assert second.split() == [str(n), "False"], second
        os.remove(path)
        os.remove(path + ".wal")


def test_flags_of_the_config_take_bools_only(path):
    # pybind11 converts None (and 0/1) to a bool; a flag given None was
    # silently False. bool and numpy.bool_ are taken.
    for flag in ("wal_enabled", "discard_log", "map_snapshot"):
        for bad in (None, 0, 1, "yes"):
            with pytest.raises(TypeError):
                iq.PersistConfig(path, **{flag: bad})
    assert iq.PersistConfig(path, wal_enabled=np.bool_(True)).wal_enabled is True
    assert iq.PersistConfig(path, map_snapshot=True).map_snapshot is True
    with pytest.raises(iq.InvalidArgumentError):  # limits of 0 are refused when the config is used
        iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path, wal_enabled=True, max_expansion_ratio=0))


def _index_types():
    types = [lambda: iq.FlatIndex(4)]
    if iq.HAVE_HNSWLIB:
        types.append(lambda: iq.HnswlibIndex(4))
    if iq.HAVE_FAISS:
        types.append(lambda: iq.FaissIndex.from_factory(4, "IDMap2,Flat"))
    return types


@pytest.mark.parametrize("make", _index_types())
def test_an_id_whose_conversion_moves_the_index_out_is_refused_by_in(path, make):
    # Converting the id of `id in ix` runs Python code (a numpy-integer
    # look-alike's __index__) that moves the index into a persisted one;
    # `in` then used the index it had taken before the conversion: SIGSEGV
    # (hnswlib, FAISS) or a wrong False (FlatIndex).
    ix = make()
    for i in range(10):
        ix.insert(i, np.full(4, i, np.float32))
    keep = []

    class Evil:
        @property
        def __class__(self):
            return np.int64

        def __index__(self):
            keep.append(iq.open_with(ix, iq.PersistConfig(path)))
            return 5

    with pytest.raises(ValueError, match="moved"):
        Evil() in ix
    assert 5 in keep[0]
    keep[0].close()


def test_a_metadata_bool_look_alike_whose_truth_raises_keeps_its_error(db):
    # PyObject_IsTrue's -1 was taken for False and the pending exception
    # surfaced at the next Python call as an AttributeError.
    class FakeBool:
        @property
        def __class__(self):
            return np.bool_

        def __bool__(self):
            raise RuntimeError("no truth here")

    e = unchanged(db, lambda: db.insert(7, np.ones(DIM, np.float32), {"flag": FakeBool()}), RuntimeError)
    assert "no truth here" in str(e)


def test_metadata_keys_of_the_same_text_are_refused(db):
    # Two str keys of the same text (a subclass comparing by identity) kept
    # one value and dropped the other without a word.
    class S(str):
        __hash__ = object.__hash__

        def __eq__(self, other):
            return self is other

    for meta in ({S("k"): 1, S("k"): 2}, {"k": 1, S("k"): 2}):
        e = unchanged(db, lambda: db.insert(7, np.ones(DIM, np.float32), meta), ValueError)
        assert "'k' is given twice" in str(e)


@pytest.mark.skipif(not iq.HAVE_HNSWLIB, reason="hnswlib adapter not built")
@pytest.mark.parametrize("kw", [{"ef": 2**31 + 1}, {"ef_construction": 2**40}])
def test_hnswlib_parameters_a_load_would_refuse_are_refused(path, kw):
    # They were taken, the inserts acknowledged, and every later load failed
    # (InvalidPayload: "ef ... is out of range"): the writes were lost.
    with pytest.raises(ValueError, match="at most 2147483648"):
        iq.HnswlibIndex(8, "euclidean", **kw)


def test_arrays_not_aligned_for_their_dtype_are_refused(db):
    # Read through typed pointers, an unaligned array (numpy.frombuffer at
    # an odd offset) is undefined behaviour; it was accepted.
    buf = bytearray(4 * DIM * 3 + 8 * 3 + 1)
    vec = np.frombuffer(buf, dtype=np.float32, offset=1, count=DIM)
    assert not vec.flags.aligned and vec.flags.c_contiguous
    e = unchanged(db, lambda: db.insert(10, vec), ValueError)
    assert "aligned" in str(e)
    block = np.frombuffer(buf, dtype=np.float32, offset=1, count=3 * DIM).reshape(3, DIM)
    unchanged(db, lambda: db.insert(np.arange(10, 13, dtype=np.uint64), block), ValueError)
    ids = np.frombuffer(buf, dtype=np.uint64, offset=1, count=3)
    assert not ids.flags.aligned
    unchanged(db, lambda: db.insert(ids, rows(3, DIM)), ValueError)
    unchanged(db, lambda: db.search(vec, 1), ValueError)


def test_objects_made_by_new_without_init_refuse_every_use():
    # Cls.__new__(Cls) gives an object whose __init__ never ran. pybind11
    # used to hand its methods uninitialised memory as the C++ object: a
    # replica's repr hung, a persisted index's repr raised MemoryError,
    # others crashed. Every method and property must now raise TypeError
    # (one child process: the old behaviour was a crash or a hang).
    child = textwrap.dedent("""
        import inspect, iqdb_persist as iq
        from iqdb_persist import _iqdb_persist as native
        classes = [c for c in vars(native).values()
                   if isinstance(c, type) and not issubclass(c, BaseException)]
        assert len(classes) >= 10, classes
        used = 0
        for cls in classes:
            o = cls.__new__(cls)
            names = [n for n, v in vars(cls).items()
                     if (not n.startswith("__") or n in ("__repr__", "__str__", "__len__", "__int__", "__index__",
                                                         "__hash__", "__getstate__"))
                     and (isinstance(v, property) or (callable(v) and not isinstance(v, (staticmethod, classmethod))
                                                      and not inspect.isclass(v)))]
            for name in names:
                try:
                    value = getattr(o, name)
                    if callable(value):
                        value()
                except TypeError as e:
                    if "never initialised" in str(e):
                        used += 1
                    else:
                        # A method that takes arguments: pybind11 refuses the
                        # call before it reads the object.
                        assert "incompatible" in str(e) or "argument" in str(e), (cls, name, e)
                else:
                    raise AssertionError(f"{cls.__name__}.{name} used an object that was never initialised")
            if hasattr(o, "__int__"):
                try:
                    int(o)
                except TypeError as e:
                    assert "never initialised" in str(e), (cls, e)
                    used += 1
        print(used)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert int(out.stdout) >= 40, out.stdout
