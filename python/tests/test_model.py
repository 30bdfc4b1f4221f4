"""Random sequences of valid and hostile calls on a persisted FlatIndex,
checked against a plain dict model: every accepted call changes the index
as the model says, every refused one raises the documented exception and
changes nothing (batches all or nothing), and what close + load (the log
replayed, or folded by a checkpoint) brings back equals the model."""

import math

import numpy as np
import pytest

import iqdb_persist as iq

DIM = 4
STEPS = 250


def key(i):
    """The model's key of an id: ints (numpy's included) and bytes are distinct ids."""
    return ("b", bytes(i)) if isinstance(i, bytes) else ("i", int(i))


class Model:
    def __init__(self, rnd):
        self.rnd = rnd
        self.items = {}  # key -> (id, vector, metadata or None)

    def fresh_id(self):
        while True:
            r = self.rnd.random()
            if r < 0.3:
                i = int(self.rnd.integers(0, 1000))
            elif r < 0.55:
                i = int(self.rnd.integers(0, 2**63)) * 2 + 1  # up to 2**64 - 1
            elif r < 0.6:
                i = 2**64 - 1
            elif r < 0.65:  # a numpy scalar, as indexing an ids array gives
                i = self.rnd.integers(0, 2**63, dtype=np.uint64)
            else:
                i = bytes(self.rnd.integers(0, 256, size=int(self.rnd.integers(1, 40)), dtype=np.uint8))
            if key(i) not in self.items:
                return i

    def present_id(self):
        keys = list(self.items)
        return self.items[keys[int(self.rnd.integers(len(keys)))]][0]

    def vector(self):
        return self.rnd.standard_normal(DIM).astype(np.float32)

    def metadata(self):
        r = self.rnd.random()
        if r < 0.4:
            return None
        values = ["", "titre é ☃", "x" * 300, 0, -2**63, 2**63 - 1, 1.5, -0.0, math.inf, True, False, None]
        n = int(self.rnd.integers(0, 4))
        return {f"k{j}\u00e9": values[int(self.rnd.integers(len(values)))] for j in range(n)}


def same_value(a, b):
    """Equal, of the same type, and floats of the same sign (-0.0 is not 0.0)."""
    return type(a) is type(b) and a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def same_metadata(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def check_equal(db, model):
    assert len(db) == len(model.items)
    for i, v, meta in model.items.values():
        assert i in db
        got = db.get(i)
        assert got is not None and np.array_equal(got.view(np.uint32), v.view(np.uint32)), i
        assert same_metadata(db.metadata(i), meta), (i, db.metadata(i), meta)
    for _ in range(5):
        absent = model.fresh_id()
        assert absent not in db and db.get(absent) is None and db.metadata(absent) is None


def check_search(db, model, k):
    q = model.vector()
    ids, dist = db.search(q, k)
    n = min(k, len(model.items))  # a 1-D query gets its hits only
    assert len(ids) == n and len(dist) == n
    every = sorted(float(np.linalg.norm(v.astype(np.float64) - q)) for _, v, _ in model.items.values())
    for j in range(n):
        i, v, _ = model.items[key(ids[j])]
        assert dist[j] == pytest.approx(np.linalg.norm(v.astype(np.float64) - q), rel=1e-4, abs=1e-5)
        assert dist[j] == pytest.approx(every[j], rel=1e-4, abs=1e-5)  # the j-th nearest, whatever the id


def refused(db, model, f, exc):
    """f must raise exc and leave the index as it was."""
    before = (db.last_lsn, len(db))
    with pytest.raises(exc):
        f()
    assert (db.last_lsn, len(db)) == before


def hostile_call(db, model):
    """One call a caller may get wrong, with the exception it must raise."""
    good = model.vector()
    cases = [
        (lambda: db.insert(model.fresh_id(), good.astype(np.float64)), TypeError),
        (lambda: db.insert(model.fresh_id(), np.zeros(DIM + 1, np.float32)), ValueError),
        (lambda: db.insert(model.fresh_id(), np.zeros(2 * DIM, np.float32)[::2]), ValueError),
        (lambda: db.insert(model.fresh_id(), np.zeros((1, 1, DIM), np.float32)), ValueError),
        (lambda: db.insert(-1, good), ValueError),
        (lambda: db.insert(2**64, good), ValueError),
        (lambda: db.insert(b"", good), ValueError),
        (lambda: db.insert("id", good), TypeError),
        (lambda: db.insert(model.fresh_id(), good, {"k": 2**63}), ValueError),
        (lambda: db.insert(model.fresh_id(), good, {"k": [1]}), TypeError),
        (lambda: db.insert(model.fresh_id(), good, {"\udfff": 1}), ValueError),
        (lambda: db.erase(model.fresh_id()), iq.IdNotFoundError),
        (lambda: db.search(good.astype(np.float64), 3), TypeError),
        (lambda: db.search(np.zeros(DIM + 2, np.float32), 3), ValueError),
    ]
    if model.items:
        cases.append((lambda: db.insert(model.present_id(), good), iq.DuplicateIdError))
    f, exc = cases[int(model.rnd.integers(len(cases)))]
    refused(db, model, f, exc)


def batch_step(db, model):
    """A WriteBatch of a few mutations, one of them possibly invalid: all
    applied, or (invalid) none."""
    b = iq.WriteBatch()
    planned = dict(model.items)
    bad = model.rnd.random() < 0.3
    bad_at = int(model.rnd.integers(0, 4))
    for j in range(4):
        if bad and j == bad_at:
            kind = int(model.rnd.integers(3))
            if kind == 0 and planned:  # an id the batch or the index already has
                b.insert(next(iter(planned.values()))[0], model.vector())
            elif kind == 1:  # an id nobody has
                b.erase(model.fresh_id())
            else:  # the wrong dimension (checked when written)
                b.insert(model.fresh_id(), np.zeros(DIM + 1, np.float32))
            continue
        if planned and model.rnd.random() < 0.3:
            i = next(iter(planned.values()))[0]
            b.erase(i)
            del planned[key(i)]
        else:
            i, v, meta = model.fresh_id(), model.vector(), model.metadata()
            while key(i) in planned:
                i = model.fresh_id()
            b.insert(i, v, meta)
            planned[key(i)] = (i, v, meta)
    if bad:
        refused(db, model, lambda: db.write(b), (iq.DuplicateIdError, iq.IdNotFoundError, iq.InvalidArgumentError))
    else:
        db.write(b)
        model.items = planned


def numpy_batch_step(db, model):
    n = int(model.rnd.integers(1, 6))
    ids = np.unique(model.rnd.integers(10**6, 2**63, size=n, dtype=np.uint64))
    ids = np.array([i for i in ids if key(int(i)) not in model.items], dtype=np.uint64)
    if len(ids) == 0:
        return
    vectors = model.rnd.standard_normal((len(ids), DIM)).astype(np.float32)
    metas = [model.metadata() for _ in ids] if model.rnd.random() < 0.5 else None
    present = [i for i, _, _ in model.items.values() if isinstance(i, int)]
    if present and model.rnd.random() < 0.2:  # one id already present: nothing of the batch lands
        ids[-1] = np.uint64(present[int(model.rnd.integers(len(present)))])
        refused(db, model, lambda: db.insert(ids, vectors, metas), iq.DuplicateIdError)
        return
    db.insert(ids, vectors, metas)
    for j, i in enumerate(ids):
        model.items[key(int(i))] = (int(i), vectors[j].copy(), None if metas is None else metas[j])


@pytest.mark.parametrize("seed", range(6))
def test_random_calls_match_the_model(tmp_path, seed):
    compression = [iq.Compression.none(), iq.Compression.lz4(), iq.Compression.zstd(3)][seed % 3]
    cfg = iq.PersistConfig(str(tmp_path / "db.iqdb"), wal_enabled=True, fsync_policy=iq.FsyncPolicy.never(),
                           compression=compression)
    model = Model(np.random.default_rng(seed))
    db = iq.open_with(iq.FlatIndex(DIM, "euclidean"), cfg)
    reloads = 0
    try:
        for _ in range(STEPS):
            r = model.rnd.random()
            if r < 0.30:
                i, v, meta = model.fresh_id(), model.vector(), model.metadata()
                db.insert(i, v, meta)
                model.items[key(i)] = (i, v, meta)
            elif r < 0.40 and model.items:
                i = model.present_id()
                db.erase(i)
                del model.items[key(i)]
            elif r < 0.55:
                hostile_call(db, model)
            elif r < 0.65:
                batch_step(db, model)
            elif r < 0.72:
                numpy_batch_step(db, model)
            elif r < 0.80:
                check_search(db, model, int(model.rnd.integers(1, 8)))
            elif r < 0.84:
                db.checkpoint()
            elif r < 0.86:
                db.save()
            elif r < 0.92:
                # Close and load: the log replayed onto the last checkpoint.
                db.close()
                db = iq.load(cfg)
                reloads += 1
                check_equal(db, model)
            else:
                check_equal(db, model)
        db.close()
        db = iq.load(cfg)
        check_equal(db, model)
        assert reloads > 0
    finally:
        db.close()
