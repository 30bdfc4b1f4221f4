"""Shared fixtures of the iqdb_persist tests (run: docs/PYTHON.md, "Tests")."""

import numpy as np
import pytest

import iqdb_persist as iq


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "db.iqdb")


def rows(n, dim, seed=0):
    """n x dim float32 normal rows, C-contiguous."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def wal_config(path, **kw):
    return iq.PersistConfig(path, wal_enabled=True, **kw)
