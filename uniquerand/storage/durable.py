"""fsync by path: what makes a written file, or a name given to it in a folder, survive a power loss."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flushes a file's data, or a folder's entries (a new, renamed or linked name), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
