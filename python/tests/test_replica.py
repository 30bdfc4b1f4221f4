"""Read replicas from Python (docs/PYTHON.md, "Read replicas").

A replica follows a writer (in this process, or in a child Python process)
through inserts, erases, batches and two checkpoints and ends equal to an
independent model: a dict of id -> (vector, metadata) the test keeps of what
the writer was told to do (the child reports each acknowledged operation
through a pipe). Also: the lag, the writer lock never taken, promotion after
the writer closed and after it was SIGKILLed, a promoted-away replica, and a
damaged log record found by reading the log as docs/FORMAT.md lays it out.
"""

import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import iqdb_persist as iq

DIM = 8


def vec(i):
    return np.arange(DIM, dtype=np.float32) * 0.125 + np.float32(i)


def meta(i):
    return {"i": i} if i % 3 == 0 else None


class Model:
    """What the writer was told to do: id -> (vector, metadata)."""

    def __init__(self):
        self.rows = {}

    def insert(self, i):
        self.rows[i] = (vec(i), meta(i))

    def erase(self, i):
        del self.rows[i]


def assert_equal_to_model(r, model, exact_vectors=True):
    assert len(r) == len(model.rows)
    for i, (v, m) in model.rows.items():
        assert i in r, f"id {i} missing"
        assert r.metadata(i) == m
        if exact_vectors:
            assert np.array_equal(r.get(i), v)
        else:  # adapters without get(): the id's own vector finds it at distance 0
            ids, dist = r.search(v, 1)
            assert int(ids[0]) == i and dist[0] == pytest.approx(0.0, abs=1e-4)


def index_kinds():
    kinds = [pytest.param(lambda: iq.FlatIndex(DIM), True, id="flat")]
    hnsw = pytest.mark.skipif(not iq.HAVE_HNSWLIB, reason="hnswlib adapter not built")
    faiss = pytest.mark.skipif(not iq.HAVE_FAISS, reason="FAISS adapter not built")
    kinds.append(pytest.param(lambda: iq.HnswlibIndex(DIM, M=8, ef=64), False, id="hnswlib", marks=hnsw))
    kinds.append(pytest.param(lambda: iq.FaissIndex.from_factory(DIM, "IDMap2,Flat"), False, id="faiss",
                              marks=faiss))
    return kinds


class Writer:
    """A persisted index and the model of what it was told to do."""

    def __init__(self, db):
        self.db = db
        self.model = Model()

    def insert(self, i):
        self.db.insert(i, vec(i), meta(i))
        self.model.insert(i)

    def erase(self, i):
        self.db.erase(i)
        self.model.erase(i)

    def batch(self, ids, erase=None):
        """A numpy batch of inserts, or a WriteBatch with an erase too."""
        if erase is None:
            self.db.insert(np.array(ids, np.uint64), np.stack([vec(i) for i in ids]), [meta(i) for i in ids])
        else:
            b = iq.WriteBatch()
            for i in ids:
                b.insert(i, vec(i), meta(i))
            self.db.write(b.erase(erase))
            self.model.erase(erase)
        for i in ids:
            self.model.insert(i)


def run_steps(w, after_each):
    """Inserts, erases, batches and two checkpoints; after_each() after every step."""
    steps = [
        lambda: [w.insert(i) for i in range(1, 11)],
        lambda: w.erase(3),
        lambda: w.batch(list(range(11, 31))),
        lambda: w.db.checkpoint(),
        lambda: w.batch([31, 32, 33], erase=5),
        lambda: [w.insert(i) for i in range(34, 40)],
        lambda: w.db.checkpoint(),
        lambda: w.erase(12),
        lambda: w.batch(list(range(40, 50))),
    ]
    for step in steps:
        step()
        after_each()


@pytest.mark.parametrize("make, exact", index_kinds())
def test_replica_follows_a_writer_in_this_process(path, make, exact):
    w = Writer(iq.open_with(make(), iq.PersistConfig(path, wal_enabled=True)))
    r = iq.open_replica(iq.PersistConfig(path))  # wal_enabled is ignored by a replica
    assert type(r).__name__.endswith("ReadReplica") and len(r) == 0

    def check():
        r.catch_up()
        assert r.last_lsn == w.db.last_lsn
        assert_equal_to_model(r, w.model, exact)

    run_steps(w, check)
    assert r.stats().reloads == 0  # each checkpoint followed to the next log, no load anew
    assert r.stats().records_applied == w.db.last_lsn
    w.db.close()
    r.close()


def test_two_checkpoints_between_catch_ups_load_anew(path):
    w = Writer(iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path, wal_enabled=True)))
    w.insert(500)
    r = iq.ReadReplica.open(iq.PersistConfig(path), iq.FlatIndex)
    run_steps(w, lambda: None)
    moved = r.catch_up()
    assert moved == w.db.last_lsn - 1 and r.stats().reloads == 1
    assert_equal_to_model(r, w.model)
    w.db.close()


def test_lag_counts_records_behind_and_time(path):
    w = Writer(iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path, wal_enabled=True)))
    w.insert(1)
    r = iq.open_replica(iq.PersistConfig(path))
    for i in range(2, 7):
        w.insert(i)
    lag = r.lag()
    assert (lag.applied_lsn, lag.available_lsn, lag.records_behind) == (1, 6, 5)
    assert len(r) == 1  # lag() applies nothing
    time.sleep(0.05)
    assert r.lag().time_behind >= 0.05
    t0 = time.monotonic()
    assert r.catch_up() == 5
    t1 = time.monotonic()
    lag = r.lag()
    assert (lag.applied_lsn, lag.available_lsn, lag.records_behind) == (6, 6, 0)
    assert t0 <= lag.fresh_as_of <= t1  # the catch-up's start, on time.monotonic()'s clock
    assert 0 <= lag.time_behind < 5
    assert "records_behind=0" in repr(lag)
    w.db.close()


def test_a_replica_never_takes_the_writer_lock(path):
    cfg = iq.PersistConfig(path, wal_enabled=True)
    iq.open_with(iq.FlatIndex(DIM), cfg).close()
    replicas = [iq.open_replica(cfg) for _ in range(3)]
    with iq.load(cfg) as db:  # a writer opens while replicas exist
        db.insert(1, vec(1))
        for r in replicas:
            assert r.catch_up() == 1 and 1 in r
    code = "import iqdb_persist as iq, numpy as np, sys\n" \
           "with iq.load(iq.PersistConfig(sys.argv[1], wal_enabled=True)) as db: db.insert(2, np.zeros(%d, np.float32))" % DIM
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60)  # and in another process
    assert all(r.catch_up() == 1 and 2 in r for r in replicas)


def test_promote_is_refused_while_the_writer_lives(path):
    w = Writer(iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path, wal_enabled=True)))
    w.insert(1)
    r = iq.open_replica(iq.PersistConfig(path))
    r.start_following(5)
    with pytest.raises(iq.LockedError):
        r.promote()
    w.insert(2)
    assert r.catch_up() == 1 and len(r) == 2  # still a replica
    w.db.close()
    with r.promote() as db:
        assert len(db) == 2


def test_promote_after_the_writer_closed_then_the_replica_is_gone(path):
    cfg = iq.PersistConfig(path, wal_enabled=True)
    w = Writer(iq.open_with(iq.FlatIndex(DIM), cfg))
    r = iq.open_replica(cfg)
    r.start_following(2)
    run_steps(w, lambda: None)
    w.db.close()
    db = r.promote()  # catches up on the log the replica may not have read yet
    assert isinstance(db, iq.PersistedFlatIndex)
    assert_equal_to_model(db, w.model)
    db.insert(1000, vec(1000))
    w.model.insert(1000)
    db.close()
    with iq.load(cfg) as again:
        assert_equal_to_model(again, w.model)
    for call in (r.catch_up, r.lag, r.stats, r.failure, r.promote, r.stop_following, lambda: len(r),
                 lambda: 1 in r, lambda: r.search(vec(1), 1), lambda: r.get(1), lambda: r.start_following(5),
                 lambda: r.last_lsn):
        with pytest.raises(ValueError, match="promoted"):
            call()
    r.close()  # closing what is gone is allowed


def test_context_manager_closes_the_replica(path):
    cfg = iq.PersistConfig(path, wal_enabled=True)
    iq.open_with(iq.FlatIndex(DIM), cfg).close()
    with iq.open_replica(cfg) as r:
        r.start_following(1)
        assert r.path == path and r.dim == DIM and r.metric == iq.Metric.Euclidean
    with pytest.raises(ValueError, match="closed"):
        len(r)
    with pytest.raises(ValueError):
        iq.open_replica(cfg).start_following(0)


def frames(log):
    """(offset, first_lsn) of each frame of a version-2 log (docs/FORMAT.md, "Write-ahead log")."""
    assert log[:8] == b"IQDBWAL\0"
    header_len = struct.unpack_from("<I", log, 12)[0]
    at, out = header_len, []
    while at + 8 <= len(log):
        body_len = struct.unpack_from("<I", log, at)[0]
        if body_len == 0:
            break  # zero padding: the end
        out.append((at, struct.unpack_from("<Q", log, at + 8)[0]))
        at += 8 + body_len
    return out


def test_a_damaged_log_record_raises_corrupt_log(path):
    w = Writer(iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path, wal_enabled=True)))
    for i in range(1, 11):
        w.insert(i)
    r = iq.open_replica(iq.PersistConfig(path))
    w.insert(11)
    at_eleven = {k: v for k, v in w.model.rows.items()}
    for i in range(12, 21):
        w.insert(i)
    w.db.close()
    log_path = path + ".wal"
    log = bytearray(open(log_path, "rb").read())
    (frame_12,) = [at for at, lsn in frames(log) if lsn == 12]
    # frame header 8, body's LSN, count, synced LSN 20, op 1, u64 id 9, vec_len 4: the vector of id 12
    log[frame_12 + 8 + 20 + 1 + 9 + 4 + 2] ^= 0x40
    with open(log_path, "r+b") as f:
        f.write(log)
    for _ in range(2):  # the replica stays at 11; the call can be repeated
        with pytest.raises(iq.CorruptLogError) as e:
            r.catch_up()
        assert isinstance(e.value, iq.CorruptedError) and e.value.kind == "corrupt_log"
        assert r.last_lsn == 11 and len(r) == 11
        assert all(np.array_equal(r.get(i), v) for i, (v, _) in at_eleven.items())
    r.start_following(1)  # in the background the error is kept in failure()
    deadline = time.monotonic() + 10
    while r.failure() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert isinstance(r.failure(), str) and "corrupt" in r.failure().lower()
    r.stop_following()


# A writer in a child process: every step it reports, once acknowledged, as a
# JSON line on stdout; the last line carries its last LSN.
CHILD_STEPS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import iqdb_persist as iq
    path, dim = sys.argv[1], int(sys.argv[2])
    def vec(i): return np.arange(dim, dtype=np.float32) * 0.125 + np.float32(i)
    def meta(i): return {"i": i} if i % 3 == 0 else None
    def say(**kw): print(json.dumps(kw), flush=True)
    with iq.load(iq.PersistConfig(path, wal_enabled=True)) as db:
        for i in range(1, 200):
            db.insert(i, vec(i), meta(i)); say(insert=[i])
            if i % 7 == 0:
                db.erase(i - 3); say(erase=i - 3)
            if i % 50 == 0:
                ids = list(range(1000 + i, 1010 + i))
                db.insert(np.array(ids, np.uint64), np.stack([vec(j) for j in ids]), [meta(j) for j in ids])
                say(insert=ids)
            if i in (80, 160):
                db.checkpoint()
        say(last_lsn=db.last_lsn)
""")


def test_replica_follows_a_writer_process_in_the_background(path):
    cfg = iq.PersistConfig(path, wal_enabled=True)
    iq.open_with(iq.FlatIndex(DIM), cfg).close()
    r = iq.open_replica(cfg)
    r.start_following(2)
    child = subprocess.run([sys.executable, "-c", CHILD_STEPS, path, str(DIM)], capture_output=True, timeout=120)
    assert child.returncode == 0, child.stderr.decode()
    model, last_lsn = Model(), None
    for line in child.stdout.decode().splitlines():
        step = json.loads(line)
        for i in step.get("insert", []):
            model.insert(i)
        if "erase" in step:
            model.erase(step["erase"])
        last_lsn = step.get("last_lsn", last_lsn)
    deadline = time.monotonic() + 30
    while r.last_lsn < last_lsn and time.monotonic() < deadline:
        time.sleep(0.005)
    assert r.failure() is None
    r.stop_following()
    assert r.last_lsn == last_lsn
    assert_equal_to_model(r, model)
    assert r.catch_up() == 0 and r.lag().records_behind == 0


CHILD_FOREVER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import iqdb_persist as iq
    path, dim = sys.argv[1], int(sys.argv[2])
    db = iq.load(iq.PersistConfig(path, wal_enabled=True))
    i = 0
    while True:
        i += 1
        db.insert(i, np.arange(dim, dtype=np.float32) * 0.125 + np.float32(i), {"i": i} if i % 3 == 0 else None)
        os.write(1, b"%d\\n" % i)   # acknowledged
        if i % 97 == 0:
            db.checkpoint()
""")


def test_promote_after_the_writer_process_is_sigkilled(tmp_path):
    rng = random.Random(11)
    for rnd in range(3):
        path = str(tmp_path / f"db{rnd}.iqdb")
        cfg = iq.PersistConfig(path, wal_enabled=True)
        iq.open_with(iq.FlatIndex(DIM), cfg).close()
        child = subprocess.Popen([sys.executable, "-c", CHILD_FOREVER, path, str(DIM)], stdout=subprocess.PIPE)
        first = child.stdout.readline()
        assert first, "the child acknowledged nothing"
        r = iq.open_replica(cfg)
        r.start_following(2)
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        acked = [int(x) for x in (first + child.stdout.read()).split()]
        child.wait()
        assert child.returncode == -signal.SIGKILL
        db = r.promote()
        n = len(db)
        assert n in (len(acked), len(acked) + 1), f"round {rnd}: {n} ids, {len(acked)} acknowledged"
        model = Model()
        for i in range(1, n + 1):  # ids 1..n, in order: every acknowledged one, perhaps one in flight
            model.insert(i)
        assert_equal_to_model(db, model)
        db.insert(10**9, vec(7))
        model.rows[10**9] = (vec(7), None)
        db.close()
        with iq.load(cfg) as again:
            assert_equal_to_model(again, model)
        with pytest.raises(ValueError):
            r.catch_up()


def test_searches_run_while_another_thread_catches_up(path):
    w = Writer(iq.open_with(iq.FlatIndex(DIM), iq.PersistConfig(path, wal_enabled=True)))
    w.insert(1)
    r = iq.open_replica(iq.PersistConfig(path))
    stop = threading.Event()
    errors = []

    def search():
        try:
            while not stop.is_set():
                ids, _ = r.search(vec(1), 1)
                assert int(ids[0]) == 1
        except Exception as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=search)
    t.start()
    for i in range(2, 300, 10):
        w.batch(list(range(i, i + 10)))
        r.catch_up()
    stop.set()
    t.join()
    assert not errors
    assert_equal_to_model(r, w.model)
    w.db.close()


def test_a_replica_that_loads_an_index_of_another_dimension_checks_queries_against_it(tmp_path):
    # The path's index made again with another dimension and metric: the
    # replica loads it anew. Its search checked queries against the
    # dimension it had when opened and then read them with the new one
    # (past the query's memory: SIGSEGV, or garbage distances).
    p = str(tmp_path / "db.iqdb")
    cfg = iq.PersistConfig(p, wal_enabled=True)
    iq.open_with(iq.FlatIndex(2), cfg).close()
    r = iq.open_replica(cfg)
    assert r.dim == 2 and r.metric == iq.Metric.Euclidean
    w = iq.open_with(iq.FlatIndex(100_000, "cosine"), cfg)
    w.insert(1, np.ones(100_000, np.float32))
    w.close()
    r.catch_up()
    assert r.stats().reloads == 1
    # (Searches first: nothing has read the new dimension yet.) No rows at
    # all is still the wrong dimension, as for a persisted index.
    with pytest.raises(ValueError, match="dimension 2, the index has 100000"):
        r.search(np.ones((0, 2), np.float32), 1)
    ids, dist = r.search(np.ones(100_000, np.float32), 1)
    assert list(ids) == [1] and abs(float(dist[0])) < 1e-6
    with pytest.raises(ValueError, match="shape|dimension"):
        r.search(np.ones((2, 2), np.float32), 1)
    with pytest.raises(ValueError, match="shape|dimension"):
        r.search(np.ones(2, np.float32), 1)
    assert r.dim == 100_000 and r.metric == iq.Metric.Cosine
    assert "dim=100000" in repr(r)
    r.close()
    assert r.dim == 100_000  # as last seen, once closed
