"""failure() of a persisted index whose log write failed (docs/API.md: after
any failed write or fsync of the log the index is poisoned).

The failure is a real one from the kernel, with no hook: a child process
lowers its own RLIMIT_FSIZE (which binds root too) to the log's size, so the
write that grows the log past its zero-filled first MiB (docs/FORMAT.md,
"Write-ahead log": the padding) fails with EFBIG. The child ignores SIGXFSZ
(CPython does by default) so the write returns the error instead of killing
it. The limit lives and dies with the child: pytest's own files are never
under it.
"""

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import iqdb_persist as iq

CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    import numpy as np
    import iqdb_persist as iq
    path, out = sys.argv[1], {}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    db = iq.open_with(iq.FlatIndex(128), iq.PersistConfig(path, wal_enabled=True))
    db.insert(1, np.ones(128, np.float32))
    out["before"] = db.failure()
    log_size = os.path.getsize(path + ".wal")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (log_size, hard))
    try:   # 3000 x 128 floats: 1.5 MB, past the log's first MiB
        db.insert(np.arange(10, 3010, dtype=np.uint64), np.ones((3000, 128), np.float32))
    except iq.PersistError as e:
        out["batch"] = [type(e).__name__, e.errno, e.path]
    out["after"] = db.failure()
    try:
        db.insert(2, np.ones(128, np.float32))
    except iq.PersistError as e:
        out["next"] = type(e).__name__
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    out["len"] = len(db)
    try:
        db.close()
    except iq.PersistError:
        pass
    print(json.dumps(out))
""")


def test_failure_is_a_str_after_the_log_write_failed(path):
    child = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, timeout=60)
    assert child.returncode == 0, child.stderr.decode()
    out = json.loads(child.stdout)
    assert out["before"] is None
    assert out["batch"] == ["IoError", errno.EFBIG, path + ".wal"]
    assert isinstance(out["after"], str) and os.strerror(errno.EFBIG) in out["after"]
    assert out["next"] == "PoisonedError"
    assert out["len"] == 1  # the failed batch was not applied
    with iq.load(iq.PersistConfig(path, wal_enabled=True)) as db:  # a reopen resolves it
        assert len(db) == 1 and 1 in db and 10 not in db and db.failure() is None
        db.insert(2, np.zeros(128, np.float32))
        assert db.failure() is None
