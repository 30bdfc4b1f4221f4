"""An index in a Ceph RADOS pool from Python (docs/PYTHON.md, "RADOS").

Needs a module built with RADOS (iq.HAVE_RADOS) and, for most tests, a
cluster: CEPH_CONF and IQDB_RADOS_POOL as scripts/ceph-cluster.sh exports
them, e.g.

    scripts/ceph-cluster.sh run --osds 1 -- /usr/bin/python3 -m pytest python/tests/test_rados.py

Results are compared with an independent model (test_replica.Model: id ->
vector, metadata, of what the writer was told to do). The writers that are
killed or paused are child Python processes, each with its own RADOS
client, standing in for other machines; they report every acknowledged
operation on stdout.
"""

import itertools
import os
import pickle
import random
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest

import iqdb_persist as iq
from test_replica import DIM, Model, Writer, assert_equal_to_model, index_kinds, meta, run_steps, vec

WITHOUT_RADOS = "the module was built without RADOS (librados-dev was not installed when it was built)"
NO_CLUSTER = "no cluster: CEPH_CONF and IQDB_RADOS_POOL are not set (scripts/ceph-cluster.sh run -- ...)"


def skip(reason):
    """Skip, or fail when IQDB_RADOS_REQUIRED=1 (scripts/test.sh: these tests must run)."""
    if os.environ.get("IQDB_RADOS_REQUIRED") == "1":
        pytest.fail(reason + ", and IQDB_RADOS_REQUIRED=1")
    pytest.skip(reason)


@pytest.fixture
def rados():
    if not iq.HAVE_RADOS:
        skip(WITHOUT_RADOS)


@pytest.fixture
def pool(rados):
    if not (os.environ.get("CEPH_CONF") and os.environ.get("IQDB_RADOS_POOL")):
        skip(NO_CLUSTER)
    return os.environ["IQDB_RADOS_POOL"]


_names = itertools.count()


@pytest.fixture
def url(pool):
    """A new index name in the pool, per test (the pool outlives the tests)."""
    return f"rados://{pool}/py-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:8]}"


def config(url, **kw):
    """A config for url: its own connection (another client, as on another machine)."""
    kw.setdefault("op_timeout_s", 20)
    return iq.PersistConfig(url, **kw)


# ------------------------------------------------------------ without a cluster

@pytest.mark.skipif(iq.HAVE_RADOS, reason="the module has RADOS: this is the error of a build without it")
def test_a_rados_path_without_rados_is_unsupported():
    with pytest.raises(iq.UnsupportedError, match="librados-dev") as e:
        iq.PersistConfig("rados://pool/name", wal_enabled=True)
    assert e.value.kind == "unsupported" and e.value.path == "rados://pool/name"


def test_rados_keywords_need_a_rados_path(tmp_path):
    with pytest.raises(iq.InvalidArgumentError, match="rados://POOL/NAME"):
        iq.PersistConfig(str(tmp_path / "db.iqdb"), client_id="admin")
    with pytest.raises(iq.InvalidArgumentError, match="reader_grace_s"):
        iq.PersistConfig(str(tmp_path / "db.iqdb"), reader_grace_s=10)
    with pytest.raises(iq.InvalidArgumentError, match="PersistConfig"):
        iq.snapshot_index_type("rados://pool/name")


def test_malformed_locations_and_options_are_refused_before_connecting(rados):
    for bad in ("rados://", "rados://pool", "rados://pool/", "rados:/pool/name", "rados://pool/a/b"):
        with pytest.raises(iq.InvalidArgumentError):
            iq.PersistConfig(bad)
    for kw in ({"lock_lease_s": 1}, {"op_timeout_s": 0}, {"connect_timeout_s": -1}, {"take_over_timeout_s": -5},
               {"lock_lease_s": 86401}, {"reader_grace_s": -1}, {"reader_grace_s": 86401}):
        with pytest.raises(iq.InvalidArgumentError, match=next(iter(kw))):
            iq.PersistConfig("rados://pool/name", **kw)


def test_an_unreachable_cluster_is_an_io_error_within_the_time_out(rados, tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    conf = tmp_path / "ceph.conf"
    conf.write_text(f"[global]\nfsid = 00000000-0000-0000-0000-000000000001\nmon_host = [v2:127.0.0.1:{port}]\n"
                    "auth_client_required = none\nauth_cluster_required = none\nauth_service_required = none\n"
                    f"run_dir = {tmp_path}\nadmin_socket = \nlog_file = \n")
    # Another Python thread runs meanwhile: connecting releases the GIL.
    stop, pauses = threading.Event(), [0.0]

    def tick():
        last = time.monotonic()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.monotonic()
            pauses[0] = max(pauses[0], now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(iq.IoError) as e:
            iq.PersistConfig("rados://nowhere/x", wal_enabled=True, ceph_conf=str(conf), connect_timeout_s=3,
                             op_timeout_s=3)
    finally:
        took = time.monotonic() - t0
        stop.set()
        ticker.join()
    assert e.value.path == "rados://nowhere/x" and e.value.kind == "io"  # the location, as the docs say
    assert took < 20, f"took {took:.1f} s with a 3 s time-out"
    assert pauses[0] < took / 3, f"another thread stopped for {pauses[0]:.2f} s of {took:.2f} s"


# ------------------------------------------------------------ round trips

@pytest.mark.parametrize("make, exact", index_kinds())
def test_round_trip_of_each_index_type(url, make, exact):
    cfg = config(url, wal_enabled=True)
    assert cfg.path == url and cfg.wal_enabled
    w = Writer(iq.open_with(make(), cfg))
    run_steps(w, lambda: None)  # inserts, erases, batches, two checkpoints
    last = w.db.last_lsn
    w.db.close()
    for wal in (True, False):  # with the WAL (the writer lock) and read-only
        with iq.load(config(url, wal_enabled=wal)) as db:  # the type from the snapshot's header
            assert type(db) is type(w.db) and db.path == url and db.last_lsn == last
            assert_equal_to_model(db, w.model, exact)
    assert iq.snapshot_index_type(config(url)) == iq.snapshot_index_type(cfg)


@pytest.mark.parametrize("compression", [iq.Compression.none(), iq.Compression.zstd(3), iq.Compression.lz4()],
                         ids=["none", "zstd", "lz4"])
def test_without_the_wal_save_and_load_under_each_compression(url, compression):
    cfg = config(url, compression=compression, fsync_policy=iq.FsyncPolicy.never())
    w = Writer(iq.open_with(iq.FlatIndex(DIM, "cosine"), cfg))
    w.batch(list(range(1, 200)))
    w.db.save()
    w.erase(7)
    w.insert(1000)
    w.db.save()
    with iq.load(cfg) as db:
        assert db.metric == iq.Metric.Cosine
        assert_equal_to_model(db, w.model)
    if iq.HAVE_HNSWLIB:
        with pytest.raises(iq.InvalidIndexTypeError):
            iq.load(cfg, index_type=iq.HnswlibIndex)


@pytest.mark.parametrize("grace", [None, 3600])
def test_a_reader_grace_keeps_what_checkpoints_superseded(url, pool, grace):
    # Without a grace the collection behind each checkpoint keeps the
    # published generation and the one it replaced; with one, a generation
    # stays that long after the publish that superseded it (here: past the
    # writer's close, which leaves them to the next publish's collection).
    kw = {} if grace is None else {"reader_grace_s": grace}
    with iq.open_with(iq.FlatIndex(4), config(url, wal_enabled=True, **kw)) as db:
        for i in range(4):
            db.insert(i, np.full(4, i, np.float32))
            db.checkpoint()
    name = url.rsplit("/", 1)[1]
    listing = subprocess.run(["rados", "-p", pool, "ls"], capture_output=True, text=True, check=True, timeout=120)
    gens = {int(o.split(".")[2]) for o in listing.stdout.split() if o.startswith(name + ".snap.")}
    assert len(gens) == (2 if grace is None else max(gens) - min(gens) + 1), sorted(gens)
    if grace is not None:
        assert len(gens) >= 5, sorted(gens)  # the first publish and four checkpoints
    with iq.load(config(url)) as back:
        assert len(back) == 4


def test_a_rados_config_refuses_to_be_pickled(url):
    # It holds a connected client; a worker makes its own from the path and keywords.
    c = config(url, wal_enabled=True)
    with pytest.raises(TypeError, match="holds a connected RADOS client"):
        pickle.dumps(c)
    assert pickle.loads(pickle.dumps(c.fsync_policy)) == c.fsync_policy


def test_nothing_published_is_a_typed_error_naming_the_location(url):
    with pytest.raises(iq.IoError) as e:
        iq.load(config(url, wal_enabled=True), index_type=iq.FlatIndex)
    assert url in str(e.value)


# ------------------------------------------------------------ writers in other processes

# A writer of rados URL (lease argv[3] s). "stream THREADS": insert forever
# from THREADS threads (thread t: ids t, t+THREADS, ...), printing each id
# once acknowledged. "commands": read "insert ID" lines, answer "ok" or
# "err ExceptionClass".
CHILD = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    import iqdb_persist as iq
    url, mode, lease = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dim = %d
    def vec(i): return np.arange(dim, dtype=np.float32) * 0.125 + np.float32(i)
    def meta(i): return {"i": i} if i %% 3 == 0 else None
    db = iq.load(iq.PersistConfig(url, wal_enabled=True, lock_lease_s=lease, op_timeout_s=20))
    os.write(1, b"open\\n")
    if mode == "stream":
        threads = int(sys.argv[4])
        def worker(i):
            while True:
                if i %% 2:
                    db.insert(i, vec(i), meta(i))
                else:   # a one-row batch
                    db.insert(np.array([i], np.uint64), vec(i)[None, :], [meta(i)])
                os.write(1, b"%%d\\n" %% i)   # acknowledged: one write per ack
                i += threads
        for t in range(threads):
            threading.Thread(target=worker, args=(t + 1,), daemon=True).start()
        threading.Event().wait()
    for line in sys.stdin:
        i = int(line.split()[1])
        try:
            db.insert(i, vec(i), meta(i))
            os.write(1, b"ok\\n")
        except iq.PersistError as e:
            os.write(1, b"err %%s %%s\\n" %% (type(e).__name__.encode(), str(e).encode()))
""" % DIM)


class Child:
    def __init__(self, url, *args, lease=3):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD, url, *args[:1], str(lease), *args[1:]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.line(60) == "open", "the child did not open the index"

    def line(self, timeout=30):
        """The next line the child writes ('' at its end); fails after timeout seconds."""
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert ready, f"the child said nothing for {timeout} s"
        return self.p.stdout.readline().decode().strip()

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        out = self.p.stdout.read()
        self.p.wait()
        return out


def test_every_acknowledged_insert_survives_sigkill(url):
    rng = random.Random(2026)
    threads = 3
    for rnd in range(3):
        name = f"{url}-{rnd}"
        iq.open_with(iq.FlatIndex(DIM), config(name, wal_enabled=True)).close()
        child = Child(name, "stream", str(threads))
        first = child.line()
        time.sleep(rng.uniform(0, 0.5))
        acked = [int(first)] + [int(x) for x in child.kill().split()]
        assert child.p.returncode == -signal.SIGKILL
        # Read-only: the dead writer's lock is still held (its lease).
        db = iq.load(config(name))
        for t in range(1, threads + 1):  # per thread, its acknowledged prefix and at most one more
            mine = sorted(i for i in acked if i % threads == t % threads)
            assert mine == list(range(t, t + threads * len(mine), threads))
            nxt = t + threads * len(mine)
            assert all(i in db for i in mine), f"round {rnd}: an acknowledged insert of thread {t} is lost"
            assert nxt + threads not in db
            if nxt in db:
                mine.append(nxt)
            for i in mine:
                assert np.array_equal(db.get(i), vec(i)) and db.metadata(i) == meta(i)
        survived = len(db)
        assert len(acked) <= survived <= len(acked) + threads
        print(f"round {rnd}: {len(acked)} acknowledged, {survived} loaded")
        if rnd == 0:  # a new writer takes the dead one's lock over (its 3 s lease) and goes on
            t0 = time.monotonic()
            with iq.load(config(name, wal_enabled=True, take_over=True, lock_lease_s=3)) as w:
                took = time.monotonic() - t0
                assert len(w) == survived
                w.insert(10**6, vec(10**6))
                w.checkpoint()
                w.insert(10**6 + 1, vec(10**6 + 1))
            with iq.load(config(name)) as again:
                assert len(again) == survived + 2 and 10**6 + 1 in again
            assert took < 3 * 2 + 30, f"the takeover took {took:.1f} s"


def test_a_second_writer_gets_locked_error(url):
    first = iq.open_with(iq.FlatIndex(DIM), config(url, wal_enabled=True))
    first.insert(1, vec(1))
    other = config(url, wal_enabled=True)  # another client
    with pytest.raises(iq.LockedError) as e:
        iq.load(other)
    assert url in str(e.value) and e.value.kind == "locked"
    with pytest.raises(iq.LockedError):
        iq.open_with(iq.FlatIndex(DIM), other)
    with pytest.raises(iq.LockedError):  # a save without the WAL takes the lock too
        iq.open_with(iq.FlatIndex(DIM), config(url)).save()
    with iq.load(config(url)) as reader:  # a read-only load takes no lock
        assert 1 in reader
    first.insert(2, vec(2))
    first.close()
    with iq.load(other) as second:
        assert len(second) == 2


@pytest.mark.parametrize("blocklist", [True, False], ids=["blocklist", "epoch"])
def test_a_paused_writer_is_fenced(url, blocklist):
    iq.open_with(iq.FlatIndex(DIM), config(url, wal_enabled=True)).close()
    a = Child(url, "commands")
    model = Model()
    for i in range(1, 21):
        a.send(f"insert {i}")
        assert a.line() == "ok"
        model.insert(i)
    os.kill(a.p.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        b = iq.load(config(url, wal_enabled=True, take_over=True, lock_lease_s=3, take_over_timeout_s=60,
                           blocklist_previous=blocklist))
        print(f"takeover of a paused writer (3 s lease): {time.monotonic() - t0:.1f} s")
        assert_equal_to_model(b, model)
        for i in range(500, 510):
            b.insert(i, vec(i), meta(i))
            model.insert(i)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    for i in (21, 22):  # what the resumed writer attempts is refused
        a.send(f"insert {i}")
        reply = a.line()
        assert reply.startswith("err FencedError"), reply
    b.insert(510, vec(510), meta(510))
    model.insert(510)
    b.close()
    a.kill()
    with iq.load(config(url)) as db:  # nothing the fenced writer attempted
        assert_equal_to_model(db, model)
        assert 21 not in db and 22 not in db


# ------------------------------------------------------------ replicas

@pytest.mark.parametrize("make, exact", index_kinds())
def test_a_replica_follows_the_writer_through_checkpoints_then_is_promoted(url, make, exact):
    w = Writer(iq.open_with(make(), config(url, wal_enabled=True)))
    r = iq.open_replica(config(url))  # its own client
    assert type(r).__name__.endswith("ReadReplica") and r.path == url and len(r) == 0

    def check():
        r.catch_up()
        assert r.last_lsn == w.db.last_lsn
        assert_equal_to_model(r, w.model, exact)

    run_steps(w, check)
    assert r.stats().records_applied == w.db.last_lsn
    # in the background too
    r.start_following(5)
    w.batch(list(range(60, 70)))
    deadline = time.monotonic() + 30
    while r.last_lsn < w.db.last_lsn and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.failure() is None and r.lag().records_behind == 0
    assert_equal_to_model(r, w.model, exact)
    with pytest.raises(iq.LockedError):  # the writer lives
        r.promote()
    w.db.close()
    db = r.promote()
    assert_equal_to_model(db, w.model, exact)
    db.insert(7000, vec(7000), meta(7000))
    w.model.insert(7000)
    db.close()
    with iq.load(config(url)) as again:
        assert_equal_to_model(again, w.model, exact)
