"""Reference counting: arrays passed in and returned stay valid after the
index is closed or garbage-collected; no reference or memory leak over a
long loop (tracemalloc and RSS bounded)."""

import gc
import sys
import tracemalloc

import numpy as np

import iqdb_persist as iq
from conftest import rows, wal_config


def test_arrays_outlive_the_index(path):
    data = rows(10, 8)
    copy = data.copy()
    db = iq.open_with(iq.FlatIndex(8), wal_config(path))
    db.insert(np.arange(10, dtype=np.uint64), data)
    ids, dist = db.search(data[:2], 3)
    vec = db.get(4)
    db.close()
    del db
    gc.collect()
    assert np.array_equal(data, copy) and np.array_equal(vec, copy[4])
    assert ids[0][0] == 0 and ids[1][0] == 1 and dist[0][0] == 0
    vec[:] = 7  # ours to change: a copy, not the index's memory
    assert vec.flags.owndata or vec.base is not None


def test_no_reference_leaks(path):
    db = iq.open_with(iq.FlatIndex(8), wal_config(path, fsync_policy=iq.FsyncPolicy.never()))
    data = rows(4, 8)
    ids = np.arange(4, dtype=np.uint64)
    before = (sys.getrefcount(data), sys.getrefcount(ids))
    db.insert(ids, data)
    db.search(data, 2)
    db.insert(100, data[0], {"k": "v"})
    try:
        db.insert(ids, data)  # duplicates: refused
    except iq.DuplicateIdError:
        pass
    assert (sys.getrefcount(data), sys.getrefcount(ids)) == before
    db.close()


def sanitizer_loaded():
    with open("/proc/self/maps") as maps:
        text = maps.read()
    return "libasan" in text or "libtsan" in text


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_no_leak_over_a_long_loop(path):
    db = iq.open_with(iq.FlatIndex(16), wal_config(path, fsync_policy=iq.FsyncPolicy.never()))
    block = rows(50, 16)
    q = rows(4, 16, seed=1)

    def round_(r):
        base = r * 50
        db.insert(np.arange(base, base + 50, dtype=np.uint64), block, [{"r": r}] * 50)
        for i in range(base, base + 50, 10):
            db.erase(i)
        db.search(q, 5)
        db.get(base + 1)
        db.metadata(base + 1)
        try:
            db.insert(base + 1, block[0].astype(np.float64))
        except TypeError:
            pass

    for r in range(50):  # warm up
        round_(r)
    gc.collect()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    rss0 = rss_kib()
    for r in range(50, 1050):
        round_(r)
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap0, "filename"))
    tracemalloc.stop()
    # Python-side allocations do not grow with the loop (a leak of one
    # object per call would be > 1000 * 50 objects)
    assert grown < 256 * 1024, grown
    # the index itself grows by 40,000 vectors of 64 bytes plus ids and
    # metadata (~ 10 MB); anything far above is a leak. Under ASan or TSan
    # (docs/PYTHON.md, "Testing under the sanitizers") RSS measures their
    # allocator (redzones, quarantine, shadow), not the module.
    if not sanitizer_loaded():
        assert rss_kib() - rss0 < 64 * 1024
    db.close()
