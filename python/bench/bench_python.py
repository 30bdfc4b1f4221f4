"""Python against C++ in one run (docs/PERFORMANCE.md, "Python"):

  batch insert of N x 128 from numpy   vs  the C++ API (iqdb_batch_bench peer batch)   target <= 1.10x
  load of N x 128 from Python          vs  the C++ load (peer load)                     target <= 1.05x
  single insert under Always           vs  the C++ loop (peer single)                   target >= 0.95x
  4 threads under Always               vs  1 thread (group commit from Python)          target >= 3x
                                       and the C++ 4 threads (peer threads)
  side by side: faiss.write_index + fsync / faiss.read_index (same N vectors),
                hnswlib save_index / load_index (a graph of --graph-n vectors)

Each Python and each C++ measurement runs in a fresh process (`peer` mode
of this script and of iqdb_batch_bench), as a user's program would: neither
side inherits the other's memory. Before each: os.sync() (no dirty pages of
another measurement), and inside each, right before its timed region, the
memory it may take is touched and freed (this VM's free page reporting,
docs/PERFORMANCE.md). Both loads read the same snapshot. The module and the
C++ peer must come from one build tree (a warning says when not). Rounds are
interleaved (each case once a round); a time ratio is the median over
rounds of the per-round ratio. Batches are 100,000 rows (a log frame holds
at most 256 MiB), with the WAL under Never, as the C++ peer does.

  PYTHONPATH=BUILD/pkg python3 python/bench/bench_python.py --cpp-bench BUILD/bench/iqdb_batch_bench --dir DIR
  python3 python/bench/bench_python.py peer batch|load|single|threads --dir DIR --n N   # wall and CPU seconds
"""

import argparse
import mmap
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
THREADS = 4  # the C++ peer's kPeerThreads


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def warm_memory(n):
    """Touch and free the memory the timed region over n rows may take, right
    before it, as the C++ peer does (warm_memory in bench/batch_bench.cpp:
    this VM hands memory free for ~2 s back to the host)."""
    size = 2 * n * DIM * 4 + (64 << 20)
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    a = np.frombuffer(m, np.uint8)
    a.fill(0)
    del a
    m.close()


class Timer:
    """Wall and CPU (all threads) seconds of a timed region, as the C++ peer's PeerTimer."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.groups = None  # records per fsync of the log, where it applies
        return self


def fresh(d):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def measure(cmd):
    """(wall, cpu) seconds a peer process prints, then the records per
    fsync of the log where it prints them (single, threads), else None.
    Dirty pages of earlier measurements are written back first, so every
    peer starts from the same page-cache state (its own files only)."""
    os.sync()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    fields = [float(x) for x in out.stdout.split()]
    return fields[0], fields[1], (fields[2] if len(fields) > 2 else None)


def cpp(args, op, d, n):
    return measure([args.cpp_bench, "peer", op, "--dir", d, "--n", str(n)])


def make_rows(n):
    return np.random.default_rng(42).standard_normal((n, DIM), dtype=np.float32)


def py_batch(d, data):
    cfg = iq.PersistConfig(os.path.join(d, "db.iqdb"), wal_enabled=True, fsync_policy=iq.FsyncPolicy.never())
    ids = np.arange(len(data), dtype=np.uint64)
    warm_memory(len(data))

    t = Timer()
    db = iq.open_with(iq.FlatIndex(DIM, "euclidean"), cfg)
    for at in range(0, len(data), CHUNK):
        db.insert(ids[at:at + CHUNK], data[at:at + CHUNK])
    t.stop()
    db.checkpoint()
    db.close()
    return t


def python_peer(op, d, n):
    """One Python measurement in a fresh process: prints its wall and CPU seconds."""
    if op == "batch":
        t = py_batch(d, make_rows(n))
    elif op == "load":
        t = py_load(d, n)
    else:
        t = py_single(d, n, threads=THREADS if op == "threads" else 1)
    print(f"{t.wall:.6f} {t.cpu:.6f}" + (f" {t.groups:.3f}" if t.groups is not None else ""))


def in_python(args, op, d, n):
    return measure([sys.executable, os.path.abspath(__file__), "peer", op, "--dir", d, "--n", str(n)])


def py_load(d, n):
    cfg = iq.PersistConfig(os.path.join(d, "db.iqdb"), wal_enabled=True, fsync_policy=iq.FsyncPolicy.never())
    warm_memory(n)
    t = Timer()
    db = iq.PersistedFlatIndex.load(cfg)
    t.stop()
    assert len(db) == n
    db.close()
    return t


def py_single(d, n, threads=1):
    rows = make_rows(min(n, 4096))
    cfg = iq.PersistConfig(os.path.join(d, "db.iqdb"), wal_enabled=True)
    db = iq.open_with(iq.FlatIndex(DIM, "euclidean"), cfg)
    warm_memory(n)

    def worker(t):
        for i in range(t, n, threads):
            db.insert(i, rows[i % len(rows)])

    timer = Timer()
    if threads == 1:  # on the calling thread, as the C++ peer's single op
        worker(0)
    else:
        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    timer.stop()
    stats = db.wal_stats()
    timer.groups = stats.records / stats.log_syncs if stats.log_syncs else 0.0
    db.close()
    return timer


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


def peer_rounds(args, r, groups, rnd):
    """One round of the Python / C++ pairs, each in fresh processes; Python
    first in even rounds, C++ first in odd ones, so neither side always
    follows the other's freed memory (docs/PERFORMANCE.md)."""
    sides = [("py", in_python), ("cpp", cpp)]
    order = sides if rnd % 2 == 0 else sides[::-1]
    dirs = {side: fresh(os.path.join(args.dir, side)) for side, _ in order}

    def note(key, got):  # groups: the records per log fsync, where the peer printed them
        wall, cpu, per_fsync = got
        r[key].append((wall, cpu))
        if per_fsync is not None:
            groups.setdefault(key, []).append(per_fsync)

    for side, run in order:
        note("batch_" + side, run(args, "batch", dirs[side], args.n))
    # Both sides load the same file (the one the first side's batch and
    # checkpoint left), with the same page-cache state.
    for side, run in order:
        note("load_" + side, run(args, "load", dirs[order[0][0]], args.n))
    for d in dirs.values():
        shutil.rmtree(d)
    for op, n in (("single", args.single_ops), ("threads", THREADS * args.single_ops)):
        for side, run in order:
            note(f"{op}_{side}", run(args, op, fresh(os.path.join(args.dir, "s")), n))


def alternative_rounds(args, r, data):
    """FAISS's and hnswlib's own save / load beside iqdb-persist's, in this process."""
    d = fresh(os.path.join(args.dir, "peers"))
    peers = [(faiss_side, data, "faiss_w", "faiss_r"), (iqdb_save, data, "iq_save", "iq_load")]
    if iq.HAVE_HNSWLIB:
        g = data[:args.graph_n]
        peers += [(hnswlib_side, g, "hnsw_w", "hnsw_r"), (iqdb_hnsw, g, "iqh_save", "iqh_load")]
    for run, vectors, save_key, load_key in peers:
        save_s, load_s = run(d, vectors)
        r[save_key].append((save_s, save_s))
        r[load_key].append((load_s, load_s))
    shutil.rmtree(d)


def report(args, r, groups):
    wall = {k: [w for w, _ in v] for k, v in r.items()}
    cpu = {k: [c for _, c in v] for k, v in r.items()}
    med = {k: statistics.median(v) for k, v in wall.items() if v}

    def ratio(a, b, of=wall):
        return statistics.median(x / y for x, y in zip(of[a], of[b]))

    def scaling(side):  # inserts/s of THREADS threads over one thread's, per round
        return statistics.median(THREADS * s / f for f, s in zip(wall["threads_" + side], wall["single_" + side]))

    rows = [
        ("batch insert from numpy (s)", med["batch_py"], med["batch_cpp"], ratio("batch_py", "batch_cpp"), "<=", 1.10,
         ratio("batch_py", "batch_cpp", cpu)),
        ("load (s)", med["load_py"], med["load_cpp"], ratio("load_py", "load_cpp"), "<=", 1.05,
         ratio("load_py", "load_cpp", cpu)),
        ("single insert, Always (inserts/s)", args.single_ops / med["single_py"], args.single_ops / med["single_cpp"],
         ratio("single_cpp", "single_py"), ">=", 0.95, ratio("single_py", "single_cpp", cpu)),
        (f"{THREADS} threads, Always (inserts/s)", THREADS * args.single_ops / med["threads_py"],
         THREADS * args.single_ops / med["threads_cpp"], ratio("threads_cpp", "threads_py"), ">=", 0.95,
         ratio("threads_py", "threads_cpp", cpu)),
        (f"{THREADS} threads / 1 thread (Python | C++)", scaling("py"), scaling("cpp"), scaling("py"), ">=", 3.0, None),
    ]
    print(f"iqdb_persist Python benchmark: {args.n} x {DIM}, {args.rounds} interleaved rounds (medians)\n")
    # CPU ratio: CPU seconds (all threads) of the Python timed regions over
    # the C++ ones, median of rounds: what the binding costs, less sensitive
    # to other processes than the wall-clock ratio.
    print(f"{'measurement':40} {'Python':>10} {'C++':>10} {'ratio':>7} {'target':>8} {'CPU ratio':>10}")
    for name, py, c, got, op, goal, cpu_ratio in rows:
        ok = got <= goal if op == "<=" else got >= goal
        cpu_s = f"{cpu_ratio:10.3f}" if cpu_ratio is not None else ""
        print(f"{name:40} {py:10.3f} {c:10.3f} {got:7.3f} {op + ' ' + str(goal):>8} {cpu_s}  {'PASS' if ok else 'MISS'}")
    if "threads_py" in groups and "threads_cpp" in groups:
        # Group commit at work: the records one fsync of the log covered, on
        # average (wal_stats: records / log_syncs); 1.0 for one thread.
        print(f"{'records per log fsync, ' + str(THREADS) + ' threads':40} "
              f"{statistics.median(groups['threads_py']):10.3f} {statistics.median(groups['threads_cpp']):10.3f}")
    print("\nper round (wall seconds, Python | C++):")
    for op in ("batch", "load", "single", "threads"):
        print(f"  {op:8} " + "  ".join(f"{p:.3f} | {c:.3f}" for p, c in zip(wall[op + "_py"], wall[op + "_cpp"])))
    if "faiss_w" not in med:
        return
    print("\nside by side (seconds, medians):")
    print(f"  faiss.write_index + fsync      {med['faiss_w']:.3f}   iqdb save (FlatIndex, durable)  {med['iq_save']:.3f}")
    print(f"  faiss.read_index               {med['faiss_r']:.3f}   iqdb load (verified)            {med['iq_load']:.3f}")
    if iq.HAVE_HNSWLIB:
        print(f"  hnswlib save_index ({args.graph_n})   {med['hnsw_w']:.3f}   iqdb save (HnswlibIndex)        {med['iqh_save']:.3f}")
        print(f"  hnswlib load_index             {med['hnsw_r']:.3f}   iqdb load (HnswlibIndex)        {med['iqh_load']:.3f}")


def same_build(cpp_bench):
    """Problems that make the two sides run different library code: the
    module not from the C++ benchmark's build tree, or either linked before
    the library was last rebuilt (in a shared working tree, a stale binary
    once made the C++ load take 1.8x the CPU of the Python one)."""
    build = os.path.dirname(os.path.dirname(os.path.realpath(cpp_bench)))
    module = os.path.realpath(iq._native.__file__)
    problems = []
    if not module.startswith(build + os.sep):
        problems.append(f"the module {module} is not from the build tree {build}")
    lib = os.path.join(build, "src", "libiqdb_persist.a")
    for binary in (os.path.realpath(cpp_bench), module):
        if os.path.exists(lib) and os.path.getmtime(binary) < os.path.getmtime(lib):
            problems.append(f"{binary} is older than {lib}: rebuild both")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="*", help="peer OP: one measurement in this process")
    ap.add_argument("--cpp-bench", help="path of iqdb_batch_bench")
    ap.add_argument("--dir", default="bench-python-tmp")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--single-ops", type=int, default=3000)
    ap.add_argument("--graph-n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-alternatives", action="store_true", help="skip FAISS's and hnswlib's own save / load")
    args = ap.parse_args()
    if args.mode:
        return python_peer(args.mode[1], args.dir, args.n)
    print(f"module {iq._native.__file__}\nC++    {args.cpp_bench}")
    for problem in same_build(args.cpp_bench):
        print(f"WARNING: {problem}")
    data = None if args.no_alternatives else make_rows(args.n)
    r = {f"{op}_{side}": [] for op in ("batch", "load", "single", "threads") for side in ("py", "cpp")}
    r.update({k: [] for k in ("faiss_w", "faiss_r", "iq_save", "iq_load", "hnsw_w", "hnsw_r", "iqh_save", "iqh_load")})
    groups = {}
    for rnd in range(args.rounds):
        peer_rounds(args, r, groups, rnd)
        if not args.no_alternatives:
            alternative_rounds(args, r, data)
    report(args, r, groups)
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
