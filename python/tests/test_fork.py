"""A child of os.fork() and the index it inherits (docs/PYTHON.md, "fork, multiprocessing").

The child reads the inherited index (search, len, in) as it was at the
fork; every insert, erase, batch, sync, save and checkpoint through it
raises ForkedError before anything is logged; close() and dropping it
return at once; the parent loses nothing and keeps the writer lock.
(multiprocessing's "fork" start method is the same os.fork().)"""

import os
import signal
import traceback

import numpy as np
import pytest

import iqdb_persist as iq
from conftest import rows, wal_config

DIM = 8


def in_child(body):
    """Run body() in a forked child; its exit code (a hang: SIGALRM)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            signal.alarm(30)
            code = body()
        except BaseException:  # noqa: B036 (reported, then the child exits)
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), f"the child was ended by signal {os.WTERMSIG(status)} (14: it hung)"
    return os.WEXITSTATUS(status)


def first_failed(checks):
    """1 + the index of the first false check, 0 when all hold."""
    for i, ok in enumerate(checks):
        if not ok:
            return i + 1
    return 0


def raises_forked(f):
    try:
        f()
    except iq.ForkedError as e:
        return e.kind == "forked" and isinstance(e, iq.PersistError)
    return False


@pytest.mark.parametrize("policy", [iq.FsyncPolicy.always(), iq.FsyncPolicy.periodic(5), iq.FsyncPolicy.never()],
                         ids=["always", "periodic", "never"])
def test_a_child_reads_the_inherited_index_and_never_writes_through_it(path, policy):
    data = rows(10, DIM)
    db = iq.open_with(iq.FlatIndex(DIM), wal_config(path, fsync_policy=policy))
    db.insert(list(range(10)), data)
    with open(path + ".wal", "rb") as f:
        log = f.read()

    def child():
        batch = iq.WriteBatch()
        batch.insert(101, data[0])
        checks = [
            len(db) == 10 and 3 in db and 100 not in db,
            int(db.search(data[7], 1)[0][0]) == 7,
            raises_forked(lambda: db.insert(100, data[0])),
            raises_forked(lambda: db.insert([200, 201], data[:2])),
            raises_forked(lambda: db.erase(3)),
            raises_forked(lambda: db.write(batch)),
            raises_forked(db.sync),
            raises_forked(db.save),
            raises_forked(db.checkpoint),
            "fork" in (db.failure() or ""),
            len(db) == 10 and 101 not in db,
        ]
        db.close()  # returns at once
        return first_failed(checks)

    assert in_child(child) == 0, "the number of the child's first failed check"
    with open(path + ".wal", "rb") as f:
        assert f.read() == log  # the child logged nothing (its bytes: the log is grown ahead of its frames)
    db.insert(list(range(10, 20)), rows(10, DIM, seed=1))
    db.close()
    again = iq.load(wal_config(path))
    assert len(again) == 20 and 100 not in again and 3 in again
    np.testing.assert_array_equal(again.get(7), data[7])
    again.close()


def test_a_child_that_drops_the_index_leaves_the_parent_its_lock(path):
    db = iq.open_with(iq.FlatIndex(DIM), wal_config(path, fsync_policy=iq.FsyncPolicy.periodic(5)))
    db.insert(1, rows(1, DIM)[0])

    def child():
        nonlocal db
        db = None  # dropped here: neither waits for the parent's flusher nor unlocks
        import gc
        gc.collect()
        try:
            iq.load(wal_config(path))
        except iq.LockedError:
            return 0
        return 1

    assert in_child(child) == 0
    with pytest.raises(iq.LockedError):
        iq.load(wal_config(path))
    db.insert(2, rows(1, DIM)[0])
    db.close()
    again = iq.load(wal_config(path))
    assert len(again) == 2
    again.close()


@pytest.mark.skipif(not iq.HAVE_FAISS, reason="built without the FAISS adapter")
def test_a_child_searches_a_faiss_index_its_parent_searched(path):
    # FAISS searches on GNU OpenMP's pool, which does not survive fork():
    # the child's first search waited for the parent's pool threads for
    # ever (an outside hunt: every run, for the index and its replica).
    data = rows(300, DIM)
    db = iq.open_with(iq.FaissIndex.from_factory(DIM, "IDMap2,Flat", "euclidean"), wal_config(path))
    db.insert(np.arange(300, dtype=np.uint64), data)
    replica = iq.open_replica(wal_config(path))
    queries = data[:40]
    expect = [db.search(queries, 3)[0], replica.search(queries, 3)[0]]  # the parent's pool exists now

    def child():
        got = [db.search(queries, 3)[0], replica.search(queries, 3)[0]]
        return first_failed([np.array_equal(g, e) for g, e in zip(got, expect)])

    assert in_child(child) == 0
    replica.close()
    db.close()
