"""Load from wrk (a C load generator): a Lua script writes each response's status and body to a file per
thread, and wrk's own latency histogram to a summary file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from uniquerand.bench.load import LoadResult, children_cpu_seconds
from uniquerand.bench.server import BenchError

LUA_SCRIPT = r"""
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  out = io.open(os.getenv("BENCH_BODIES_DIR") .. "/bodies-" .. id .. ".txt", "w")
end
function response(status, headers, body)
  -- JSON holds no raw newline: dropping Flask's trailing one keeps one response per line.
  out:write(status, " ", (string.gsub(body, "\n", "")), "\n")
end
function done(summary, latency, requests)
  local f = io.open(os.getenv("BENCH_BODIES_DIR") .. "/summary.json", "w")
  local e = summary.errors
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "p50": %d, "p95": %d, "p99": %d, "max": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "timeout": %d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout))
  f:close()
end
"""


def run_wrk(
    executable: str,
    url: str,
    concurrency: int,
    duration: int,
    threads: int,
    timeout: float,
    bodies_dir: Path,
    extra_lua: str = "",
    extra_env: dict[str, str] | None = None,
) -> LoadResult:
    """`extra_lua`: more of the script (a `request` function that varies the path, with `extra_env`)."""
    bodies_dir.mkdir(parents=True, exist_ok=True)
    script = bodies_dir / "record.lua"
    script.write_text(LUA_SCRIPT + extra_lua)
    threads = max(1, min(threads, concurrency))
    command = [executable, f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", f"--timeout={timeout:.0f}s",
               "-s", str(script), url]  # fmt: skip
    env = {**os.environ, "BENCH_BODIES_DIR": str(bodies_dir), **(extra_env or {})}
    cpu_before = children_cpu_seconds()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=duration + timeout + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    cpu = children_cpu_seconds() - cpu_before
    summary_path = bodies_dir / "summary.json"
    if process.returncode != 0 or not summary_path.exists():
        raise BenchError(f"wrk failed ({process.returncode}): {output.decode(errors='replace')[-2000:]}")
    summary = json.loads(summary_path.read_text())
    if summary["duration_us"] < 0.9 * duration * 1e6:
        # wrk ends early and cleanly on SIGINT: a cut row must not pass for a measurement.
        raise BenchError(f"wrk stopped after {summary['duration_us'] / 1e6:.1f}s of {duration}s.")
    return LoadResult(
        generator="wrk",
        duration=summary["duration_us"] / 1e6,
        latency_ms={key: summary[key] / 1000 for key in ("p50", "p95", "p99", "max")},
        socket_errors={key: summary[key] for key in ("connect", "read", "write", "timeout") if summary[key]},
        client_cpu_seconds=cpu,
        bodies_dir=bodies_dir,
    )
