"""`flask bench`: every stage side by side under the same closed-loop load, against /healthz as baseline.

Modules: server (gunicorn lifecycle, idle wait), procfs, prefill, targets, wrk / pyclient (load), results,
report, chart, runner (the whole run). Nothing here is imported by the server itself.
"""
