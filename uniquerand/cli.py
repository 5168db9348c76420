"""Command-line tools (`flask init-shards`, `flask bench`): thin click wrappers over plain functions."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from uniquerand.storage.contract import StoreError

# Fills at least this large report their progress after every chunk.
PROGRESS_FROM = 100_000


def register(app: Flask) -> None:
    app.cli.add_command(init_shards_command)
    app.cli.add_command(bench_command)


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


def _csv(kind: type):
    def parse(ctx, param, value):
        if value is None:
            return ()
        try:
            # 10_000 reads as 10000 for numbers.
            return tuple(kind(item.strip()) for item in value.split(",") if item.strip())
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None

    return parse


@click.command("bench")
@click.option("--url", help="Measure a server already running on 127.0.0.1/localhost instead of starting one.")
@click.option("--workers", type=click.IntRange(1), help="gunicorn workers (default: gunicorn.conf.py).")
@click.option("--threads", type=click.IntRange(1), help="Threads per worker (default: gunicorn.conf.py).")
@click.option("--worker-class", help="gunicorn worker class, e.g. uniquerand.worker.BalancedThreadWorker "
              "(default: gunicorn.conf.py).")  # fmt: skip
@click.option("--prefill", "prefills", default="0", callback=_csv(int), help="Numbers already issued, e.g. 0,10000.")
@click.option("--stages", callback=_csv(str), help="Stages to measure, e.g. v1,v3 (default: all the index lists).")
@click.option("--types", "kinds", default="int,float", callback=_csv(str), help="Number types: int,float.")
@click.option("--count", type=click.IntRange(1), help="Also measure batches of this many numbers per request.")
@click.option("--concurrency", type=click.IntRange(1), default=32, show_default=True, help="Keep-alive clients.")
@click.option("--duration", type=click.IntRange(1), default=10, show_default=True, help="Seconds per row.")
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True,
              help="Seconds of load before each row's measured window (not counted; its duplicates are).")  # fmt: skip
@click.option("--baseline", type=click.Choice(["each", "once"]), default="each", show_default=True,
              help="Ratio to /healthz: the mean of runs just before and after each row (each), "
                   "or the level's first run (once).")  # fmt: skip
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True,
              help="Rounds over every row; the table shows each row's median round and its ratios' range.")  # fmt: skip
@click.option("--client", type=click.Choice(["auto", "wrk", "python"]), default="auto", show_default=True,
              help="Load generator: wrk if installed (auto), or the multi-process Python client.")  # fmt: skip
@click.option("--idle-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Longest wait for the server to go idle between rows.")  # fmt: skip
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default="bench-results",
              show_default=True, help="Folder for the JSON results and the PNG chart.")  # fmt: skip
@click.option("--chart/--no-chart", default=True, show_default=True, help="Draw the PNG chart (needs matplotlib).")
def bench_command(**params) -> None:
    """Compare every stage side by side: requests/s, numbers/s, ratio to /healthz, latency, duplicates."""
    from uniquerand.bench.report import table
    from uniquerand.bench.runner import BenchOptions, run_bench
    from uniquerand.bench.server import BenchError

    bad_types = set(params["kinds"]) - {"int", "float"}
    if bad_types or not params["kinds"]:
        raise click.BadParameter("must be int, float or int,float", param_hint="--types")
    if any(level < 0 for level in params["prefills"]):
        raise click.BadParameter("must be 0 or more", param_hint="--prefill")
    options = BenchOptions(
        url=params["url"], workers=params["workers"], threads=params["threads"],
        worker_class=params["worker_class"], prefills=params["prefills"] or (0,),
        stages=params["stages"], kinds=params["kinds"], count=params["count"], concurrency=params["concurrency"],
        duration=params["duration"], warmup=params["warmup"], baseline=params["baseline"], repeat=params["repeat"],
        client=params["client"],
        idle_timeout=params["idle_timeout"], output=params["output"], chart=params["chart"],
    )  # fmt: skip
    previous = _stop_on_sigterm()
    try:
        outcome = run_bench(options, lambda message, fg=None: click.secho(message, fg=fg, err=True))
    except BenchError as err:
        click.secho(f"bench failed: {err}", fg="red", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.secho("bench interrupted; every process it started was stopped.", fg="red", err=True)
        sys.exit(130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    click.echo(table(outcome.medians, outcome.rows))
    click.echo(f"\nJSON: {outcome.json_path}" + (f"\nchart: {outcome.chart_path}" if outcome.chart_path else ""))
    if outcome.duplicates:
        click.secho(f"DUPLICATES: {outcome.duplicates} numbers were handed out twice.", fg="red", bold=True, err=True)
        sys.exit(2)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so that the servers and load processes are stopped on the way out."""
    try:
        return signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        return None
