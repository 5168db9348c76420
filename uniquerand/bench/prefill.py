"""Pre-fills every stage's store in an instance folder through the stores' bulk path, before a server starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from uniquerand import create_app


def prefill_instance(
    instance_path: Path, count: int, stages: list[str] | None, kinds: list[str], progress: Callable[[str], None]
) -> dict[str, float]:
    """Records `count` numbers of each type as issued in each selected stage; returns seconds per stage.

    Runs at `count` 0 too: a store's prefill also prepares it as a deployment would (/v4 fills its shards,
    as `flask init-shards` does), so that the first seconds of a row do not measure a cold start."""
    app = create_app({"INSTANCE_PATH": str(instance_path)})
    stores = app.extensions["uniquerand"]["stores"]
    timings = {}
    for name, store in stores.items():
        if stages and name not in stages:
            continue
        start = time.monotonic()
        for kind in kinds:
            if count:
                progress(f"  prefill /{name} {kind}: {count:,} numbers")
            store.prefill(kind, count)
        timings[name] = round(time.monotonic() - start, 2)
    return timings
