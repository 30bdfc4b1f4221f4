"""Python against C++ in one run (docs/PERFORMANCE.md, "Python"):

  batch insert of N x 128 from numpy   vs  the C++ API (iqdb_batch_bench peer batch)   target <= 1.10x
  load of N x 128 from Python          vs  the C++ load (peer load)                     target <= 1.05x
  single insert under Always           vs  the C++ loop (peer single)                   target >= 0.95x
  4 threads under Always               vs  1 thread (group commit from Python)          target >= 3x
  side by side: faiss.write_index + fsync / faiss.read_index (same N vectors),
                hnswlib save_index / load_index (a graph of --graph-n vectors)

Each Python and each C++ measurement runs in a fresh process (`peer` mode
of this script and of iqdb_batch_bench), as a user's program would: neither
side inherits the other's memory or page-cache state. Rounds are
interleaved (each case once a round); a time ratio is the median over
rounds of the per-round ratio. Batches are 100,000 rows (a log frame holds
at most 256 MiB), with the WAL under Never, as the C++ peer does.

  python3 python/bench/bench_python.py --cpp-bench BUILD/bench/iqdb_batch_bench --dir DIR
  python3 python/bench/bench_python.py peer batch|load|single --dir DIR --n N   # one measurement: seconds
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

import iqdb_persist as iq

DIM = 128
CHUNK = 100_000


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def fresh(d):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def cpp(args, op, d, n):
    out = subprocess.run([args.cpp_bench, "peer", op, "--dir", d, "--n", str(n)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip())


def make_rows(n):
    return np.random.default_rng(42).standard_normal((n, DIM), dtype=np.float32)


def py_batch(d, data):
    cfg = iq.PersistConfig(os.path.join(d, "db.iqdb"), wal_enabled=True, fsync_policy=iq.FsyncPolicy.never())
    ids = np.arange(len(data), dtype=np.uint64)

    def run():
        db = iq.open_with(iq.FlatIndex(DIM, "euclidean"), cfg)
        for at in range(0, len(data), CHUNK):
            db.insert(ids[at:at + CHUNK], data[at:at + CHUNK])
        run.db = db

    s = timed(run)
    run.db.checkpoint()
    run.db.close()
    return s


def python_peer(op, d, n):
    """One Python measurement in a fresh process: prints its seconds."""
    if op == "batch":
        print(f"{py_batch(d, make_rows(n)):.6f}")
    elif op == "load":
        print(f"{py_load(d, n):.6f}")
    else:
        print(f"{py_single(d, n):.6f}")


def in_python(args, op, d, n):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "peer", op, "--dir", d, "--n", str(n)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def py_load(d, n):
    cfg = iq.PersistConfig(os.path.join(d, "db.iqdb"), wal_enabled=True, fsync_policy=iq.FsyncPolicy.never())
    box = {}
    s = timed(lambda: box.setdefault("db", iq.PersistedFlatIndex.load(cfg)))
    assert len(box["db"]) == n
    box["db"].close()
    return s


def py_single(d, n, threads=1):
    cfg = iq.PersistConfig(os.path.join(d, "db.iqdb"), wal_enabled=True)
    db = iq.open_with(iq.FlatIndex(DIM, "euclidean"), cfg)
    rows = make_rows(min(n, 4096))

    def worker(t):
        for i in range(t, n, threads):
            db.insert(i, rows[i % len(rows)])

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    s = time.perf_counter() - t0
    db.close()
    return s


def faiss_side(d, data):
    import faiss
    index = faiss.IndexFlatL2(DIM)
    index.add(data)
    p = os.path.join(d, "faiss.index")

    def write():
        faiss.write_index(index, p)
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    w = timed(write)
    r = timed(lambda: faiss.read_index(p))
    return w, r


def iqdb_save(d, data):
    cfg = iq.PersistConfig(os.path.join(d, "save.iqdb"))
    db = iq.open_with(iq.FlatIndex(DIM, "euclidean"), cfg)
    for at in range(0, len(data), CHUNK):
        db.insert(np.arange(at, min(at + CHUNK, len(data)), dtype=np.uint64), data[at:at + CHUNK])
    s = timed(db.save)
    db.close()
    r = timed(lambda: iq.PersistedFlatIndex.load(cfg).close())
    return s, r


def hnswlib_side(d, data):
    import hnswlib
    g = hnswlib.Index(space="l2", dim=DIM)
    g.init_index(max_elements=len(data), M=16, ef_construction=100)
    g.add_items(data, np.arange(len(data)))
    p = os.path.join(d, "hnsw.bin")
    w = timed(lambda: g.save_index(p))
    h = hnswlib.Index(space="l2", dim=DIM)
    r = timed(lambda: h.load_index(p))
    return w, r


def iqdb_hnsw(d, data):
    cfg = iq.PersistConfig(os.path.join(d, "hnsw.iqdb"))
    db = iq.open_with(iq.HnswlibIndex(DIM, "euclidean", M=16, ef_construction=100, initial_capacity=len(data)), cfg)
    db.insert(np.arange(len(data), dtype=np.uint64), data)
    s = timed(db.save)
    db.close()
    r = timed(lambda: iq.PersistedHnswlibIndex.load(cfg).close())
    return s, r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="*", help="peer OP: one measurement in this process")
    ap.add_argument("--cpp-bench", help="path of iqdb_batch_bench")
    ap.add_argument("--dir", default="bench-python-tmp")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--single-ops", type=int, default=500)
    ap.add_argument("--graph-n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.mode:
        return python_peer(args.mode[1], args.dir, args.n)
    data = make_rows(args.n)
    r = {k: [] for k in ("batch_py", "batch_cpp", "load_py", "load_cpp", "single_py", "single_cpp", "one_py", "four_py",
                         "faiss_w", "faiss_r", "iq_save", "iq_load", "hnsw_w", "hnsw_r", "iqh_save", "iqh_load")}
    for rnd in range(args.rounds):
        # Python first in even rounds, C++ first in odd ones: neither side
        # always follows the other's freed memory (docs/PERFORMANCE.md).
        sides = [("py", in_python), ("cpp", cpp)]
        for side, run in sides if rnd % 2 == 0 else sides[::-1]:
            d = fresh(os.path.join(args.dir, side))
            r["batch_" + side].append(run(args, "batch", d, args.n))
            r["load_" + side].append(run(args, "load", d, args.n))
            shutil.rmtree(d)
        r["single_py"].append(in_python(args, "single", fresh(os.path.join(args.dir, "s")), args.single_ops))
        r["single_cpp"].append(cpp(args, "single", fresh(os.path.join(args.dir, "s")), args.single_ops))
        r["one_py"].append(py_single(fresh(os.path.join(args.dir, "s")), args.single_ops))
        r["four_py"].append(py_single(fresh(os.path.join(args.dir, "s")), 4 * args.single_ops, threads=4))
        d = fresh(os.path.join(args.dir, "peers"))
        peers = [(faiss_side, data, "faiss_w", "faiss_r"), (iqdb_save, data, "iq_save", "iq_load")]
        if iq.HAVE_HNSWLIB:
            g = data[:args.graph_n]
            peers += [(hnswlib_side, g, "hnsw_w", "hnsw_r"), (iqdb_hnsw, g, "iqh_save", "iqh_load")]
        for run, vectors, save_key, load_key in peers:
            save_s, load_s = run(d, vectors)
            r[save_key].append(save_s)
            r[load_key].append(load_s)
        shutil.rmtree(os.path.join(args.dir, "peers"))

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(r[a], r[b]))

    med = {k: statistics.median(v) for k, v in r.items() if v}
    print(f"iqdb_persist Python benchmark: {args.n} x {DIM}, {args.rounds} interleaved rounds (medians)\n")
    rows = [
        ("batch insert from numpy (s)", med["batch_py"], med["batch_cpp"], ratio("batch_py", "batch_cpp"), "<= 1.10",
         ratio("batch_py", "batch_cpp") <= 1.10),
        ("load (s)", med["load_py"], med["load_cpp"], ratio("load_py", "load_cpp"), "<= 1.05",
         ratio("load_py", "load_cpp") <= 1.05),
        ("single insert, Always (inserts/s)", args.single_ops / med["single_py"], args.single_ops / med["single_cpp"],
         ratio("single_cpp", "single_py"), ">= 0.95", ratio("single_cpp", "single_py") >= 0.95),
    ]
    four = statistics.median((4 * args.single_ops / f) / (args.single_ops / s) for f, s in zip(r["four_py"], r["one_py"]))
    print(f"{'measurement':36} {'Python':>12} {'C++':>12} {'ratio':>8} {'target':>8}")
    for name, py, c, ratio_, target, ok in rows:
        print(f"{name:36} {py:12.3f} {c:12.3f} {ratio_:8.3f} {target:>8}  {'PASS' if ok else 'MISS'}")
    print(f"{'4 threads / 1 thread, Always':36} {4 * args.single_ops / med['four_py']:12.0f} {'':>12} {four:8.2f} "
          f"{'>= 3':>8}  {'PASS' if four >= 3 else 'MISS'}")
    print("\nside by side (seconds, medians):")
    print(f"  faiss.write_index + fsync      {med['faiss_w']:.3f}   iqdb save (FlatIndex, durable)  {med['iq_save']:.3f}")
    print(f"  faiss.read_index               {med['faiss_r']:.3f}   iqdb load (verified)            {med['iq_load']:.3f}")
    if iq.HAVE_HNSWLIB:
        print(f"  hnswlib save_index ({args.graph_n})   {med['hnsw_w']:.3f}   iqdb save (HnswlibIndex)        {med['iqh_save']:.3f}")
        print(f"  hnswlib load_index             {med['hnsw_r']:.3f}   iqdb load (HnswlibIndex)        {med['iqh_load']:.3f}")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
