"""The GIL is released during I/O and fsync: 4 Python threads inserting
under Always share fsyncs (group commit). The throughput figure (4 threads
against 1) is a benchmark (python/bench/bench_python.py), not asserted here."""

import threading

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
