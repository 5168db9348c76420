"""uniquerand: globally unique random numbers over HTTP, one blueprint per stage of the design."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, request

from uniquerand import cli, logs
from uniquerand import config as settings
from uniquerand.errors import register_error_handlers
from uniquerand.numbers import spaces_from_config


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Builds the app: defaults, then UNIQUERAND_* variables, then `test_config`, then validation."""
    from uniquerand.blueprints import docs, index, operations
    from uniquerand.blueprints.access import guard_from_config
    from uniquerand.blueprints.spaces import signing_keys_blueprint, spaces_blueprint
    from uniquerand.blueprints.stage import stage_blueprint
    from uniquerand.metrics import Metrics
    from uniquerand.stages import build_stages

    settings.check_sqlite()
    settings.check_environment(os.environ)
    app = Flask(__name__)
    app.config.from_mapping(settings.DEFAULTS, INSTANCE_PATH=app.instance_path)
    app.config.from_prefixed_env("UNIQUERAND")
    if test_config:
        app.config.from_mapping(test_config)
    settings.validate(app.config)
    logs.configure(app.config["LOG_LEVEL"])

    spaces = spaces_from_config(app.config)
    stages = build_stages(Path(app.config["INSTANCE_PATH"]), spaces, app.config)
    metrics = Metrics(stages)
    # None without TOKENS_FILE: every path is open.
    guard = guard_from_config(app.config)
    app.extensions["uniquerand"] = {
        "spaces": spaces,
        "stages": stages,
        "stores": {stage.name: stage.store for stage in stages},
        "metrics": metrics,
        "guard": guard,
    }

    register_error_handlers(app)
    app.after_request(_never_cache)
    app.register_blueprint(index.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(operations.bp)
    for stage in stages:
        app.register_blueprint(stage_blueprint(stage, metrics.observer(stage.name), guard))
        if stage.named_spaces is not None:
            app.register_blueprint(spaces_blueprint(stage.name, stage.named_spaces, guard, stage.replies, stage.signer))
        if stage.signer is not None:
            app.register_blueprint(signing_keys_blueprint(stage.name, stage.signer))
    cli.register(app)
    return app


# The files of the docs page: Flask sends them with an ETag, so a browser revalidates its copy instead of
# fetching Swagger UI's bundle again on every visit.
_FILE_ENDPOINTS = frozenset({"static", "docs.static"})


def _never_cache(response):
    # A cached number would be served twice; no response of this API may be reused.
    if request.endpoint not in _FILE_ENDPOINTS:
        response.headers["Cache-Control"] = "no-store"
    return response
