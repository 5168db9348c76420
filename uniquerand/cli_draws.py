"""`flask signing-key rotate` and `flask verify`: the operator's and the third party's side of signed draws."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import with_appcontext

from uniquerand.signing import KeyFile, SigningKeyError, verify

KEY_SET_PATH = "/v5/signing-keys"


class UnreadableError(click.ClickException):
    """Exit status 2: nothing was checked (1 is kept for an invalid result)."""

    exit_code = 2


@click.group("signing-key")
def signing_key_command() -> None:
    """The Ed25519 key that signs /v5's signed draws (SIGNING_KEY_FILE)."""


@signing_key_command.command("rotate")
@with_appcontext
def rotate_command() -> None:
    """Make a new signing key; the old key's public half stays in the key set, so its results still verify.
    Copy the file to every host of the deployment."""
    key_file = KeyFile(Path(current_app.config["SIGNING_KEY_FILE"]))
    try:
        old, new = key_file.rotate()
    except SigningKeyError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"signing key rotated: {old} -> {new} ({key_file.path}); copy this file to every host")


@click.command("verify")
@click.argument("result", type=click.File("rb"))
@click.option(
    "--keys",
    "keys",
    required=True,
    metavar="FILE_OR_URL",
    help=f"The key set: a JWKS file, or the server's URL (http://host:8000 reads {KEY_SET_PATH}).",
)
def verify_command(result, keys: str) -> None:
    """Check a saved signed result (a file, or - for standard input) against a key set: valid, or why not."""
    try:
        document = json.loads(result.read())
    except ValueError as err:
        raise UnreadableError(f"the result is not JSON: {err}") from None
    key_set = _key_set(keys)
    try:
        click.echo(verify(document, key_set))
    except ValueError as err:
        click.echo(f"invalid: {err}", err=True)
        sys.exit(1)


def _key_set(source: str) -> object:
    parts = urlsplit(source)
    try:
        if parts.scheme in ("http", "https"):
            url = source if parts.path not in ("", "/") else source.rstrip("/") + KEY_SET_PATH
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        return json.loads(Path(source).read_text())
    except (OSError, ValueError) as err:
        raise UnreadableError(f"the key set {source!r} cannot be read: {err}") from None
