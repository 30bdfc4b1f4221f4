"""`python -m iqdb_persist`: points to the command-line tool."""

import sys

from . import __version__

MESSAGE = f"""iqdb_persist {__version__} (Python module).

The command-line tool is the C++ program `iqdb-persist` (inspect, verify,
wal dump/repair, checkpoint, demo). Build it from the repository with
    cmake -S . -B build && cmake --build build --target iqdb-persist
or install the Debian package `iqdb-persist` (cpack -G DEB), then run
    iqdb-persist --help
"""


def main() -> int:
    sys.stdout.write(MESSAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
