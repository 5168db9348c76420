"""gunicorn defaults for `gunicorn wsgi:app`; any of them can be overridden on the command line."""

import os

bind = os.environ.get("UNIQUERAND_BIND", "127.0.0.1:8000")
# gevent: each request is a greenlet, so a worker serves on while requests wait for a store's lock or
# fsync, and handing a request to a store's writer and back costs a greenlet switch, not a thread switch.
# The stores run every wait that blocks in the kernel (flock, fsync, SQLite's busy handler) on a real
# thread (uniquerand/storage/runtime.py). gunicorn's gevent worker, yielding after each request so that one
# fast keep-alive client cannot hold a worker (uniquerand/worker.py). `uniquerand.worker.BalancedThreadWorker`
# is the thread worker this project used before (see docs/workers.md).
worker_class = os.environ.get("UNIQUERAND_WORKER_CLASS", "uniquerand.worker.FairGeventWorker")
worker_connections = 1000
workers = int(os.environ.get("UNIQUERAND_WORKERS", "4"))
# The thread worker's threads per worker (gevent's worker ignores it).
threads = int(os.environ.get("UNIQUERAND_THREADS", "4"))
keepalive = 5
# Off on purpose: every worker opens its own SQLite connections, locks and thread pools after the
# fork, so nothing is inherited half-open from the master.
preload_app = False
# No control socket (gunicorn 27 opens one by default): nothing but the HTTP port listens.
control_socket_disable = True
# The default request-line limit (4094 bytes) stays: the longest request this API understands is under
# 100 bytes, and a larger limit only lets bigger junk in. Beyond it gunicorn answers 414 itself.
limit_request_line = 4094


def on_starting(server):
    """Gives the workers' Prometheus metrics a folder to add up in (prometheus-client's multiprocess mode,
    see uniquerand/metrics.py): PROMETHEUS_MULTIPROC_DIR if set, emptied of an earlier run's files, else a new
    temporary folder, removed at exit. Set here, in the master, before any worker imports prometheus-client."""
    import glob
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*.db")):
            os.remove(stale)
    else:
        folder = tempfile.mkdtemp(prefix="uniquerand-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        server.uniquerand_metrics_folder = folder
    server.log.info("Metrics of the workers in %s", folder)


def child_exit(server, worker):
    """A worker that ended keeps its counts (they are totals), but its live values are dropped."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    import shutil

    folder = getattr(server, "uniquerand_metrics_folder", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def post_worker_init(worker):
    """Makes gunicorn's own error pages JSON (below), then builds what the worker's first requests would
    otherwise wait for (see `uniquerand.stages.prepare_stores`)."""
    from uniquerand.stages import prepare_stores

    json_error_pages()
    if hasattr(worker.wsgi, "extensions"):  # the uniquerand app, not gunicorn's error app after a failed load
        prepare_stores(worker.wsgi)


def json_error_pages():
    """Requests gunicorn refuses before the app sees them (request line too long or malformed, raw
    non-ASCII bytes, headers too large) get a JSON body like every other error of this API, not HTML.

    gunicorn writes those answers through `gunicorn.util.write_error` (pinned in requirements.txt;
    tests/test_hostile_input.py fails if an upgrade bypasses this)."""
    import json

    from gunicorn import util

    def write_json_error(sock, status_int, reason, mesg):
        code = reason.lower().replace(" ", "_")
        # The bytes jsonify writes for the same object outside debug mode, as the app's own errors are.
        body = json.dumps({"error": mesg or reason, "code": code}, separators=(",", ":"), sort_keys=True) + "\n"
        head = (
            f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Cache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        util.write_nonblock(sock, (head + body).encode("latin1"))

    util.write_error = write_json_error
