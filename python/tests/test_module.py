"""The module's face: python -m, docstrings, stubs, context manager."""

import os
import subprocess
import sys

import numpy as np
import pytest

import iqdb_persist as iq


def test_python_m_points_to_the_cli():
    out = subprocess.run([sys.executable, "-m", "iqdb_persist"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "iqdb-persist" in out.stdout and "--help" in out.stdout


def test_stubs_and_docstrings_are_installed():
    pkg = os.path.dirname(iq.__file__)
    assert os.path.exists(os.path.join(pkg, "__init__.pyi")) and os.path.exists(os.path.join(pkg, "py.typed"))
    assert "batch" in iq.PersistedFlatIndex.insert.__doc__
    assert "GIL" in iq.__doc__


def test_context_manager_closes_and_reports(path):
    cfg = iq.PersistConfig(path, wal_enabled=True)
    with iq.open_with(iq.FlatIndex(4), cfg) as db:
        db.insert(1, np.ones(4, np.float32))
    with pytest.raises(iq.PersistError):
        db.insert(2, np.ones(4, np.float32))
    # closed: the lock is free
    with iq.load(cfg) as again:
        assert 1 in again and len(again) == 1
    # an error in the block propagates, and the index is closed
    with pytest.raises(RuntimeError):
        with iq.load(cfg) as again:
            raise RuntimeError("boom")
    iq.load(cfg).close()


def test_load_picks_the_type_from_the_header(path):
    with iq.open_with(iq.FlatIndex(4), iq.PersistConfig(path)) as db:
        db.save()
    assert iq.snapshot_index_type(path) == "flat"
    if iq.HAVE_HNSWLIB:
        with pytest.raises(iq.InvalidIndexTypeError):
            iq.load(iq.PersistConfig(path), index_type=iq.HnswlibIndex)
