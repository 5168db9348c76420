"""Pre-fills every stage's store in an instance folder through the stores' bulk path, before a server starts."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

from uniquerand import create_app
from uniquerand.bench.server import BenchError


def prefill_instance(
    instance_path: Path,
    count: int,
    stages: list[str] | None,
    kinds: list[str],
    progress: Callable[[str], None],
    database_url: str | None = None,
) -> dict[str, float]:
    """Records `count` numbers of each type as issued in each selected stage; returns seconds per stage.

    Runs at `count` 0 too: a store's prefill also prepares it as a deployment would (/v4 fills its shards,
    as `flask init-shards` does), so that the first seconds of a row do not measure a cold start.
    `database_url` "": the stages on files whatever UNIQUERAND_DATABASE_URL says; a URL: the stages that keep
    their state in that PostgreSQL database, and only those (see `prefill_on_postgres`)."""
    settings = {"INSTANCE_PATH": str(instance_path)}
    if database_url is not None:
        settings["DATABASE_URL"] = database_url
    app = create_app(settings)
    timings = {}
    for stage in app.extensions["uniquerand"]["stages"]:
        if (stages and stage.name not in stages) or (database_url and "PostgreSQL" not in stage.store_description):
            continue
        start = time.monotonic()
        for kind in kinds:
            if count:
                progress(f"  prefill /{stage.name}{'-pg' if database_url else ''} {kind}: {count:,} numbers")
            stage.store.prefill(kind, count)
        timings[stage.name] = round(time.monotonic() - start, 2)
    return timings


def prefill_on_postgres(
    instance_path: Path,
    database_url: str,
    count: int,
    stages: list[str] | None,
    kinds: list[str],
    progress: Callable[[str], None],
) -> dict[str, float]:
    """`prefill_instance` for the stages on PostgreSQL, in a child process: the connection pools, writer threads
    and exit hooks of those stores end with it, not in the bench."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_prefill_child, args=(sender, instance_path, database_url, count, stages, kinds), daemon=True
    )
    child.start()
    sender.close()
    try:
        while True:
            try:
                kind, value = receiver.recv()
            except EOFError:
                child.join(30)
                raise BenchError(f"the PostgreSQL stages' prefill ended with exit code {child.exitcode}") from None
            if kind == "progress":
                progress(value)
            elif kind == "error":
                raise BenchError(f"prefill of the PostgreSQL stages: {value}")
            else:
                return value
    finally:
        receiver.close()
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join(10)


def _prefill_child(sender, instance_path: Path, database_url: str, count: int, stages, kinds) -> None:
    """Module-level target of the prefill process: sends ("progress", line)..., then ("done", timings) or
    ("error", message)."""
    try:
        timings = prefill_instance(
            instance_path, count, stages, kinds, lambda line: sender.send(("progress", line)), database_url
        )
        sender.send(("done", timings))
    except Exception as err:
        sender.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        sender.close()
