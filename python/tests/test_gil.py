"""The GIL is released during I/O and fsync: 4 Python threads inserting
under Always share fsyncs (group commit). The throughput figure (4 threads
against 1) is a benchmark (python/bench/bench_python.py), not asserted here."""

import threading
import time

import numpy as np

import iqdb_persist as iq
from conftest import wal_config


def test_four_threads_share_fsyncs(path):
    db = iq.open_with(iq.FlatIndex(8), wal_config(path, commit_spin_us=0))
    per_thread = 150
    barrier = threading.Barrier(4)

    def worker(t):
        barrier.wait()
        v = np.full(8, t, np.float32)
        for i in range(per_thread):
            db.insert(t * per_thread + i, v)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    st = db.wal_stats()
    assert st.commits == 4 * per_thread and len(db) == 4 * per_thread
    # with the GIL held through each fsync, every commit would have its own
    assert st.log_syncs < st.commits * 0.8, (st.commits, st.log_syncs)
    db.close()


def test_search_runs_while_another_thread_inserts(path):
    db = iq.open_with(iq.FlatIndex(8), wal_config(path))
    db.insert(np.arange(100, dtype=np.uint64), np.ones((100, 8), np.float32))
    stop = threading.Event()
    found = []

    def searcher():
        while not stop.is_set():
            found.append(db.search(np.ones(8, np.float32), 3)[0].size)

    th = threading.Thread(target=searcher)
    th.start()
    for i in range(100, 150):
        db.insert(i, np.ones(8, np.float32))
    stop.set()
    th.join()
    assert found and all(n == 3 for n in found)
    db.close()


def _largest_pause_while(call, other):
    """Run call() in a thread while this thread counts; return (seconds call
    took, the longest pause between two of this thread's iterations)."""
    done = threading.Event()
    took = []

    def run():
        t0 = time.perf_counter()
        try:
            call()
        finally:
            took.append(time.perf_counter() - t0)
            done.set()

    th = threading.Thread(target=run)
    last = time.perf_counter()
    pause = 0.0
    th.start()
    while not done.is_set():
        now = time.perf_counter()
        pause, last = max(pause, now - last), now
    th.join()
    other.join()
    return took[0], pause


def test_calls_that_wait_for_the_log_release_the_gil(path):
    # A checkpoint holds the log's mutex while it writes the snapshot (zstd at
    # a high level: seconds of CPU); wal_stats(), last_lsn and failure() wait
    # for it. Were the GIL held through that wait, this thread would stop.
    # As many rows as it takes for a checkpoint to last 0.6 s or more on this
    # machine (60,000 took 0.19 s on a fast host: too short to prove anything).
    rng = np.random.default_rng(1)
    cfg = wal_config(path, compression=iq.Compression.zstd(15), fsync_policy=iq.FsyncPolicy.never())
    db = iq.open_with(iq.FlatIndex(32), cfg)
    n = 0
    for _ in range(32):
        rows = rng.standard_normal((60_000, 32)).astype(np.float32)
        db.insert(np.arange(n, n + len(rows), dtype=np.uint64), rows)
        n += len(rows)
        t0 = time.perf_counter()
        db.checkpoint()
        if time.perf_counter() - t0 >= 0.6:
            break
    for call in (db.wal_stats, lambda: db.last_lsn, db.failure):
        # Up to three tries: on a loaded machine the checkpoint's thread may
        # not have the mutex yet when the call is made (it then returns at
        # once, and proves nothing either way).
        for _ in range(3):
            ck = threading.Thread(target=db.checkpoint)
            ck.start()
            time.sleep(0.05)  # the checkpoint has the mutex
            took, pause = _largest_pause_while(call, ck)
            if took > 0.2:
                break
        assert took > 0.2, f"the call did not wait for the checkpoint ({took:.3f} s): the test proves nothing"
        assert pause < took / 3, (took, pause)
    # what they return (failure() was once an unconvertible std::optional)
    assert db.failure() is None and db.last_lsn == n and db.wal_stats().records == n
    db.close()


def test_replica_catch_up_and_search_release_the_gil(path):
    # A catch-up that applies many logged records, and a search of 400
    # queries over them (20 took only 0.07 s on a quiet machine, and a
    # catch-up of 200,000 records 0.067 s on a fast host: too short to prove
    # anything): were the GIL held, this thread would stop meanwhile. How many
    # records: as many batches of 50,000 as it takes for the catch-up to last
    # ~0.4 s here (at most 32), timed on a probe replica that catches up one
    # batch.
    rows = np.random.default_rng(2).standard_normal((50_000, 32)).astype(np.float32)
    cfg = wal_config(path, fsync_policy=iq.FsyncPolicy.never())
    db = iq.open_with(iq.FlatIndex(32), cfg)
    replica = iq.open_replica(cfg)
    probe = iq.open_replica(cfg)
    db.insert(np.arange(len(rows), dtype=np.uint64), rows)
    t0 = time.perf_counter()
    probe.catch_up()
    per_batch = max(time.perf_counter() - t0, 1e-3)
    probe.close()
    batches = min(32, max(4, int(0.4 / per_batch) + 1))
    for b in range(1, batches):
        db.insert(np.arange(b * len(rows), (b + 1) * len(rows), dtype=np.uint64), rows)
    # The search's work kept at 400 queries over 200,000 rows (~1 s).
    queries = rows[: max(20, 400 * 4 // batches)]
    for call in (replica.catch_up, lambda: replica.search(queries, 5)):
        idle = threading.Thread(target=lambda: None)
        idle.start()
        took, pause = _largest_pause_while(call, idle)
        assert took > 0.1, f"the call took {took:.3f} s: the test proves nothing"
        assert pause < took / 3, (took, pause)
    assert len(replica) == batches * len(rows)
    db.close()
