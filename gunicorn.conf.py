"""gunicorn defaults for `gunicorn wsgi:app`; any of them can be overridden on the command line."""

import os

bind = os.environ.get("UNIQUERAND_BIND", "127.0.0.1:8000")
# Threads serve while a request waits on a store's lock or fsync; processes use both cores.
worker_class = "gthread"
workers = int(os.environ.get("UNIQUERAND_WORKERS", "4"))
threads = int(os.environ.get("UNIQUERAND_THREADS", "4"))
keepalive = 5
# Off on purpose: every worker opens its own SQLite connections, locks and thread pools after the
# fork, so nothing is inherited half-open from the master.
preload_app = False
# Keep the master's control socket out of the working tree.
control_socket_disable = True
