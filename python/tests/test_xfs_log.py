"""A writer's log on XFS, in a real child process (docs/RELIABILITY.md, "What survives what").

Under Periodic and Never the log was written through a shared mapping of
its preallocated space on XFS too, and two outside-found ways ended the
writer with SIGBUS at its next insert: a full disk after the live log's
blocks were shared by a plain `cp` (reflink, on by default), and an XFS
shutdown (what XFS does by itself after a metadata I/O error). The insert
must fail with a typed IoError and poison the index; nothing acknowledged
may be lost. Needs root, a loop device and xfsprogs (scripts/deps.sh
test); skipped without them."""

import os
import shutil
import subprocess
import sys

import pytest

import iqdb_persist as iq

DIM = 8
TOOLS = ("mkfs.xfs", "xfs_io", "losetup", "mount", "umount", "cp")

CHILD = r"""
import errno, os, subprocess, sys
import numpy as np
import iqdb_persist as iq
mnt, policy, how = sys.argv[1:4]
fsync = {"periodic": iq.FsyncPolicy.periodic(20), "never": iq.FsyncPolicy.never()}[policy]
db = iq.open_with(iq.FlatIndex(8), iq.PersistConfig(mnt + "/x.iqdb", wal_enabled=True, fsync_policy=fsync))
for i in range(200):
    db.insert(i, np.full(8, i, np.float32))
db.sync()  # the log's pages written back: clean, write-protected again
if how == "reflink":
    subprocess.run(["cp", mnt + "/x.iqdb.wal", mnt + "/backup.wal"], check=True)  # clones the blocks
    fd = os.open(mnt + "/filler", os.O_WRONLY | os.O_CREAT, 0o644)
    off, chunk = 0, 64 << 20
    while chunk >= 4096:
        try:
            os.posix_fallocate(fd, off, chunk)
            off += chunk
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            chunk //= 2
    os.close(fd)
else:
    subprocess.run(["xfs_io", "-x", "-c", "shutdown", mnt], check=True)
acked = 0
try:
    for i in range(1000, 4000):
        db.insert(i, np.full(8, i, np.float32))
        acked += 1
    print("RESULT none", acked, flush=True)
except iq.PersistError as e:
    print("RESULT", type(e).__name__, acked, "poisoned" if db.failure() else "usable", flush=True)
"""


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def xfs(tmp_path):
    """A fresh 320 MiB XFS (mkfs.xfs's defaults: reflink on) mounted at tmp_path/mnt."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip("needs root and " + ", ".join(missing or TOOLS) + " (scripts/deps.sh test)")
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    run("mkfs.xfs", "-q", "-f", str(image))
    try:
        dev = run("losetup", "-f", "--show", str(image))
    except subprocess.CalledProcessError as e:
        pytest.skip("no loop device: " + e.stderr.strip())
    mounted = False
    try:
        run("mount", dev, str(mnt))
        mounted = True
        yield str(mnt), dev
    finally:
        # The test may have unmounted it already (to mount it again).
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.mark.parametrize("policy", ["periodic", "never"])
@pytest.mark.parametrize("how", ["reflink", "shutdown"])
def test_a_log_on_xfs_fails_with_a_typed_error_not_sigbus(xfs, policy, how):
    mnt, dev = xfs
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.run([sys.executable, "-c", CHILD, mnt, policy, how], capture_output=True, text=True,
                           env=env, timeout=120)
    assert child.returncode == 0, f"the writer ended with {child.returncode} (-7: SIGBUS)\n{child.stdout}{child.stderr}"
    result = [line for line in child.stdout.splitlines() if line.startswith("RESULT")]
    assert len(result) == 1, child.stdout + child.stderr
    _, kind, acked, state = result[0].split()
    assert (kind, state) == ("IoError", "poisoned"), result[0]
    if how == "shutdown":
        # Mount again (XFS replays its journal): what was synced before the shutdown is there.
        subprocess.run(["umount", mnt], check=True, capture_output=True)
        run("mount", dev, mnt)
        expect = range(200)
    else:
        os.remove(os.path.join(mnt, "filler"))
        expect = list(range(200)) + list(range(1000, 1000 + int(acked)))
    db = iq.load(iq.PersistConfig(os.path.join(mnt, "x.iqdb"), wal_enabled=True))
    try:
        for i in expect:
            assert i in db, i
            assert float(db.get(i)[0]) == float(i)
    finally:
        db.close()
