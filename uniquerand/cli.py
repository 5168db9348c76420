"""Command-line tools (`flask init-shards`, `flask bench`, `flask tokens`, and from `cli_draws` `flask signing-key`
and `flask verify`): thin click wrappers over plain functions."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from uniquerand.cli_draws import signing_key_command, verify_command
from uniquerand.scopes import ScopeError, check_scopes
from uniquerand.storage.contract import StoreError
from uniquerand.tokens import TokenFile, TokenFileError, TokenNameError, check_name

# Fills at least this large report their progress after every chunk.
PROGRESS_FROM = 100_000


def register(app: Flask) -> None:
    app.cli.add_command(init_shards_command)
    app.cli.add_command(bench_command)
    app.cli.add_command(tokens_command)
    app.cli.add_command(signing_key_command)
    app.cli.add_command(verify_command)


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
@click.option("--spaces", type=click.IntRange(0), default=0, show_default=True,
              help="Create this many named spaces on /v5 first (timed), then add a row drawing from one and a row "
                   "spread over up to 1000 of them.")  # fmt: skip
@click.option("--verifiable", is_flag=True,
              help="Add /v5's verifiable-draw rows: /v5/random with a new Idempotency-Key per request, and a named "
                   "space's batches of 100, unsigned then signed (needs wrk).")  # fmt: skip
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
@click.option("--database-url", metavar="URL",
              help="Also measure /v3-/v5 on this PostgreSQL database (rows /v3-pg etc., from a second server); one "
                   "the bench may fill: it must hold no uniquerand tables; those it makes are dropped.")  # fmt: skip
@click.option("--postgres", is_flag=True,
              help="Like --database-url, on a throwaway cluster the bench starts from the Debian binaries "
                   "(127.0.0.1, fsync on, pg_stat_statements) and removes at the end.")  # fmt: skip
@click.option("--cost", is_flag=True,
              help="With --postgres/--database-url: statements, commits and WAL per 1000 numbers of each "
                   "PostgreSQL row, the ceiling of one database server and the app hosts it carries.")  # fmt: skip
def bench_command(**params) -> None:
    """Compare every stage side by side: requests/s, numbers/s, ratio to /healthz, latency, duplicates."""
    from uniquerand.bench.options import BenchOptions
    from uniquerand.bench.report import cost_table, table
    from uniquerand.bench.runner import run_bench
    from uniquerand.bench.server import BenchError

    bad_types = set(params["kinds"]) - {"int", "float"}
    if bad_types or not params["kinds"]:
        raise click.BadParameter("must be int, float or int,float", param_hint="--types")
    if any(level < 0 for level in params["prefills"]):
        raise click.BadParameter("must be 0 or more", param_hint="--prefill")
    if params["chart"] and importlib.util.find_spec("matplotlib") is None:
        # requirements.txt (what scripts/serve installs) has no matplotlib: the run goes on without the chart.
        click.secho("no chart: matplotlib is not installed (pip install -r requirements-bench.txt draws it).", err=True)
        params["chart"] = False
    options = BenchOptions(
        url=params["url"], workers=params["workers"], threads=params["threads"],
        worker_class=params["worker_class"], prefills=params["prefills"] or (0,),
        stages=params["stages"], kinds=params["kinds"], count=params["count"], spaces=params["spaces"],
        verifiable=params["verifiable"], concurrency=params["concurrency"],
        duration=params["duration"], warmup=params["warmup"], baseline=params["baseline"], repeat=params["repeat"],
        client=params["client"],
        idle_timeout=params["idle_timeout"], output=params["output"], chart=params["chart"],
        database_url=params["database_url"], postgres=params["postgres"], cost=params["cost"],
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
    if outcome.costs or outcome.capacity:
        click.echo(cost_table(outcome.costs, outcome.capacity))
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


@click.group("tokens")
def tokens_command() -> None:
    """Access tokens (UNIQUERAND_TOKENS_FILE): create one per client, list them, revoke one. A running server
    picks up every change at its next request, without a restart."""


def _token_file() -> TokenFile:
    path = current_app.config["TOKENS_FILE"]
    if not path:
        raise click.ClickException("UNIQUERAND_TOKENS_FILE is not set: name the file that holds the token hashes.")
    return TokenFile(Path(path))


@tokens_command.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="What the token may do, repeatable: spaces:admin (create spaces), draw:NAME (draw from the space NAME), "
    "draw:* (draw everywhere). None: draw:*.",
)
@with_appcontext
def create_token_command(name: str, scopes: tuple[str, ...]) -> None:
    """Create a token for the client NAME and print it, once. NAME: 1 to 64 of A-Z a-z 0-9 . _ -"""
    _check_name_argument(name)
    try:
        check_scopes(scopes)
    except ScopeError as err:
        raise click.BadParameter(str(err), param_hint="--scope") from None
    tokens = _token_file()
    try:
        token = tokens.create(name, scopes)
    except (TokenNameError, TokenFileError) as err:
        raise click.ClickException(str(err)) from None
    # The token alone on stdout (TOKEN=$(flask tokens create NAME)); the notice on stderr.
    click.echo(token)
    click.echo(f"Token for {name!r} created in {tokens.path}. It will not be shown again: store it now.", err=True)


@tokens_command.command("list")
@with_appcontext
def list_tokens_command() -> None:
    """List the clients that have a token, when each was created and what it may do; never the tokens or their
    hashes."""
    tokens = _token_file()
    if not tokens.path.exists():
        click.echo(f"No tokens: {tokens.path} does not exist yet.", err=True)
        return
    try:
        entries = tokens.entries()
    except TokenFileError as err:
        raise click.ClickException(str(err)) from None
    for entry in entries:
        click.echo(f"{entry.name}\t{entry.created or '-'}\t{','.join(entry.granted)}")
    if not entries:
        click.echo(f"No tokens in {tokens.path}.", err=True)


@tokens_command.command("revoke")
@click.argument("name")
@with_appcontext
def revoke_token_command(name: str) -> None:
    """Revoke the token of the client NAME. Running servers refuse it from their next request on."""
    _check_name_argument(name)
    try:
        _token_file().revoke(name)
    except (TokenNameError, TokenFileError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Revoked the token of {name!r}.", err=True)


def _check_name_argument(name: str) -> None:
    try:
        check_name(name)
    except TokenNameError as err:
        raise click.BadParameter(str(err), param_hint="NAME") from None
