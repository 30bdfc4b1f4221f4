"""Crash safety from Python: a child Python process inserts under Always from
4 threads and reports every acknowledged insert through a pipe, flushed
after each; it is SIGKILLed at a random instant. The parent loads the index
and finds every acknowledged insert, with its vector and metadata."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

import iqdb_persist as iq

ROUNDS = 6
DIM = 16

CHILD = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    import iqdb_persist as iq
    path, dim = sys.argv[1], int(sys.argv[2])
    db = iq.load(iq.PersistConfig(path, wal_enabled=True))
    def vec(i):
        return np.full(dim, i, np.float32) + np.arange(dim, dtype=np.float32)
    def worker(t):
        i = t
        while True:
            if i % 3 == 0:   # every third insert a one-row batch with metadata
                db.insert(np.array([i], np.uint64), vec(i)[None, :], [{"i": i}])
            else:
                db.insert(i, vec(i), {"i": i})
            os.write(1, b"%d\\n" % i)   # acknowledged: one write per ack
            i += 4
    for t in range(4):
        threading.Thread(target=worker, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


def vec(i):
    return np.full(DIM, i, np.float32) + np.arange(DIM, dtype=np.float32)


def test_every_acknowledged_insert_survives_sigkill(tmp_path):
    rng = random.Random(2024)
    for r in range(ROUNDS):
        path = str(tmp_path / f"db{r}.iqdb")
        cfg = iq.PersistConfig(path, wal_enabled=True)
        iq.open_with(iq.FlatIndex(DIM), cfg).close()
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(DIM)], stdout=subprocess.PIPE)
        first = child.stdout.readline()  # the first ack: the child is inserting
        assert first, "the child acknowledged nothing"
        time.sleep(rng.uniform(0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()
        child.wait()
        assert child.returncode == -signal.SIGKILL
        acked = [int(x) for x in (first + rest).split()]
        db = iq.load(cfg)
        missing = [i for i in acked if i not in db]
        assert not missing, f"round {r}: acknowledged inserts lost: {missing[:10]}"
        for i in acked[:: max(1, len(acked) // 50)]:
            assert np.array_equal(db.get(i), vec(i)) and db.metadata(i) == {"i": i}
        # whatever else survived was written whole
        assert len(db) >= len(acked)
        db.close()
