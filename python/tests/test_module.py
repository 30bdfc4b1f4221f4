"""The module's face: python -m, docstrings, stubs, context manager."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

import iqdb_persist as iq


def test_python_m_points_to_the_cli(tmp_path):
    # Not on PATH: how to build it. On PATH: where it is.
    env = dict(os.environ, PATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "iqdb_persist"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and "not on PATH" in out.stdout and "--target iqdb-persist" in out.stdout
    assert "copy" in out.stdout and "--help" in out.stdout
    tool = tmp_path / "iqdb-persist"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    out = subprocess.run([sys.executable, "-m", "iqdb_persist"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and f"It is here: {tool}" in out.stdout and "not on PATH" not in out.stdout


def test_stubs_and_docstrings_are_installed():
    pkg = os.path.dirname(iq.__file__)
    assert os.path.exists(os.path.join(pkg, "__init__.pyi")) and os.path.exists(os.path.join(pkg, "py.typed"))
    assert "batch" in iq.PersistedFlatIndex.insert.__doc__
    assert "GIL" in iq.__doc__


def stub_members(classes, name):
    """Methods and attributes a stub class declares, with its bases'."""
    node = classes[name]
    out = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    out |= {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            out |= stub_members(classes, base.id)
    return out


def test_stubs_declare_every_public_name_and_method():
    with open(os.path.join(os.path.dirname(iq.__file__), "__init__.pyi")) as f:
        tree = ast.parse(f.read())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    declared = set(classes) | {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    declared |= {t.id for n in tree.body if isinstance(n, ast.AnnAssign) for t in [n.target]}
    declared |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    ours = {k: v for k, v in vars(iq).items()
            if not k.startswith("_") and getattr(v, "__module__", "").startswith("iqdb_persist")}
    assert sorted(set(ours) - declared) == []
    for name, obj in ours.items():
        if isinstance(obj, type) and obj.__module__ == "iqdb_persist._iqdb_persist" and name != "Metric":
            public = {a for a in dir(obj) if not a.startswith("_")}
            assert sorted(public - stub_members(classes, name)) == [], name


def test_stub_attributes_are_settable_exactly_where_the_module_lets_them_be():
    # The stubs declared the fields of PersistConfig, WalStats, ReplicaLag
    # and ReplicaStats as plain attributes (assignable, for a type checker)
    # while the module gives read-only properties (an outside hunt): a
    # plain attribute in a stub must be settable, a @property without a
    # setter must not be.
    with open(os.path.join(os.path.dirname(iq.__file__), "__init__.pyi")) as f:
        tree = ast.parse(f.read())
    checked = 0
    for node in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        obj = getattr(iq, node.name, None)
        if not isinstance(obj, type) or obj.__module__ != "iqdb_persist._iqdb_persist" or node.name == "Metric":
            continue
        for member in node.body:
            runtime = getattr(obj, member.target.id if isinstance(member, ast.AnnAssign) else
                              getattr(member, "name", ""), None)
            if isinstance(member, ast.AnnAssign):
                assert getattr(runtime, "fset", None) is not None, f"{node.name}.{member.target.id} is read-only"
                checked += 1
            elif isinstance(member, ast.FunctionDef) and any(
                    isinstance(d, ast.Name) and d.id == "property" for d in member.decorator_list):
                assert isinstance(runtime, property) and runtime.fset is None, f"{node.name}.{member.name}"
                checked += 1
    assert checked >= 28


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


def test_reprs_say_what_the_objects_are(path):
    names = {"PersistConfig": iq.PersistConfig, "FsyncPolicy": iq.FsyncPolicy, "Compression": iq.Compression}
    for c in (iq.Compression.none(), iq.Compression.lz4(), iq.Compression.zstd(), iq.Compression.zstd(7, 2)):
        assert eval(repr(c), names) == c
    assert repr(iq.Compression.zstd(7, 2)) == "Compression.zstd(7, threads=2)"
    cfg = iq.PersistConfig(path, wal_enabled=True, fsync_policy=iq.FsyncPolicy.periodic(50),
                           compression=iq.Compression.lz4(), checkpoint_log_bytes=4096, map_snapshot=True)
    assert repr(cfg) == (f"PersistConfig({str(path)!r}, wal_enabled=True, fsync_policy=FsyncPolicy.periodic(50), "
                         "compression=Compression.lz4(), checkpoint_log_bytes=4096, map_snapshot=True)")
    again = eval(repr(cfg), names)
    assert (again.path, again.wal_enabled, again.fsync_policy, again.compression, again.checkpoint_log_bytes,
            again.map_snapshot) == (str(path), True, iq.FsyncPolicy.periodic(50), iq.Compression.lz4(), 4096, True)
    assert repr(iq.PersistConfig("x")) == \
        "PersistConfig('x', wal_enabled=False, fsync_policy=FsyncPolicy.always(), compression=Compression.none())"
    ix = iq.FlatIndex(4, "cosine")
    ix.insert(1, np.ones(4, np.float32))
    assert repr(ix) == "FlatIndex(dim=4, metric=Metric.Cosine, len=1)"
    with iq.open_with(ix, iq.PersistConfig(path, wal_enabled=True)) as db:
        assert repr(ix) == "FlatIndex(<moved into a persisted index>)"
        assert repr(db) == f"PersistedFlatIndex({str(path)!r}, dim=4, metric=Metric.Cosine)"
        db.insert(2, np.ones(4, np.float32))
        assert repr(db.wal_stats()).startswith("WalStats(commits=1, records=1, log_syncs=1, auto_checkpoints=0,")
    replica = iq.open_replica(iq.PersistConfig(path))
    assert repr(replica) == f"FlatReadReplica({str(path)!r}, dim=4, metric=Metric.Cosine)"
    replica.close()
    assert repr(replica) == f"FlatReadReplica({str(path)!r}, dim=4, metric=Metric.Cosine)"  # after close too
