"""`python -m iqdb_persist`: points to the command-line tool."""

import shutil
import sys

from . import __version__

TOOL = "iqdb-persist"

MESSAGE = f"""iqdb_persist {__version__} (Python module).

The command-line tool is the C++ program `{TOOL}` (inspect, verify, copy,
wal dump/repair, checkpoint, demo).
"""

NOT_FOUND = f"""It is not on PATH. Build it from the repository with
    cmake -S . -B build && cmake --build build --target {TOOL}
or install the Debian package `{TOOL}` (cpack -G DEB), then run
    {TOOL} --help
"""


def main() -> int:
    where = shutil.which(TOOL)
    found = f"It is here: {where}\n    {TOOL} --help\n" if where else NOT_FOUND
    sys.stdout.write(MESSAGE + found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
