"""Command-line tools (`flask init-shards`): thin click wrappers over the stores' plain functions."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from uniquerand.storage.base import StoreError

# Fills at least this large report their progress after every chunk.
PROGRESS_FROM = 100_000


@click.command("init-shards")
@click.option("--size", type=click.IntRange(min=1), help="Available numbers per shard (default V4_SHARD_SIZE).")
@with_appcontext
def init_shards_command(size: int | None) -> None:
    """Create the /v4 shards and ledgers and fill every shard up to SIZE available numbers."""
    store = current_app.extensions["uniquerand"]["stores"]["v4"]
    target = size or current_app.config["V4_SHARD_SIZE"]

    def progress(shard: str, available: int, goal: int) -> None:
        if goal >= PROGRESS_FROM:
            click.echo(f"  {shard}: {available}/{goal}")

    try:
        reports = store.fill_shards(target, progress)
    except StoreError as err:
        raise click.ClickException(str(err)) from err
    for report in reports:
        click.echo(f"{report.shard}: added {report.added}, available {report.available}")


def register(app: Flask) -> None:
    app.cli.add_command(init_shards_command)
