"""Builds the extension module iqdb_persist._iqdb_persist with CMake.

From a checkout, into a virtual environment that sees Debian's packages
(README.md, "Python"; docs/PYTHON.md):

    python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation .

Nothing is downloaded: pybind11, numpy, setuptools and wheel come from
Debian (scripts/deps.sh). CMake builds the library and the module (target
iqdb_persist_python) in build-python/cmake, kept between installs so that a
reinstall rebuilds only what changed; IQDB_PY_BUILD_DIR moves it and
IQDB_PY_JOBS sets the build's parallelism (default 2). The FAISS, hnswlib
and RADOS parts are built in when their Debian packages (libfaiss-dev,
libhnswlib-dev, librados-dev) are installed: iqdb_persist.HAVE_FAISS,
HAVE_HNSWLIB, HAVE_RADOS say which were.
"""

import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        build_dir = pathlib.Path(os.environ.get("IQDB_PY_BUILD_DIR", ROOT / "build-python" / "cmake")).resolve()
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found: run scripts/deps.sh build (apt-get install cmake)")
        subprocess.check_call([
            cmake, "-S", str(ROOT), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DIQDB_PERSIST_WITH_PYTHON=ON",
            "-DIQDB_PERSIST_BUILD_TESTS=OFF", "-DIQDB_PERSIST_BUILD_TOOLS=OFF",
            "-DIQDB_PERSIST_BUILD_BENCH=OFF", "-DIQDB_PERSIST_BUILD_EXAMPLES=OFF",
            "-DIQDB_PERSIST_INSTALL=OFF",
        ])
        jobs = os.environ.get("IQDB_PY_JOBS", "2")
        subprocess.check_call([cmake, "--build", str(build_dir), "--target", "iqdb_persist_python", "-j", jobs])
        built = sorted((build_dir / "python").glob("_iqdb_persist*.so"))
        if not built:
            raise RuntimeError(f"the module was not built in {build_dir / 'python'}")
        out = pathlib.Path(self.get_ext_fullpath(ext.name))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], out)


setup(
    ext_modules=[CMakeExtension("iqdb_persist._iqdb_persist")],
    cmdclass={"build_ext": CMakeBuild},
    # setuptools' own build tree, away from the C++ build directories.
    options={"build": {"build_base": str(ROOT / "build-python" / "setuptools")},
             "egg_info": {"egg_base": str(ROOT / "build-python")}},
)
