"""The README's paths as a new user takes them: virtualenvs made from the requirement files alone (pip's cache
may serve them; no dev package), then `gunicorn wsgi:app`, `scripts/serve`, `flask init-shards` and
`flask bench --help` from them. The rest of the suite runs in the dev virtualenv, which would hide a runtime
import that only a dev package brings (gunicorn's gevent worker imports `packaging`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO, free_port, get

INSTALL_TIMEOUT = 600
SERVE_TIMEOUT = 60


def clean_environment(**extra: str) -> dict[str, str]:
    """The caller's environment without this suite's virtualenv or any UNIQUERAND_ setting."""
    drop = ("UNIQUERAND_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    return {**{key: value for key, value in os.environ.items() if not key.startswith(drop)}, **extra}


def make_venv(folder: Path, requirements: str) -> Path:
    """A virtualenv at `folder` with `requirements` (a file of the repository) installed, and nothing else."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    subprocess.run(
        [folder / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", REPO / requirements],
        check=True, timeout=INSTALL_TIMEOUT, env=clean_environment(),
    )  # fmt: skip
    return folder / "bin"


@pytest.fixture(scope="module")
def server_bin(tmp_path_factory) -> Path:
    return make_venv(tmp_path_factory.mktemp("fresh") / "venv", "requirements.txt")


@pytest.fixture(scope="module")
def bench_bin(tmp_path_factory) -> Path:
    return make_venv(tmp_path_factory.mktemp("fresh-bench") / "venv", "requirements-bench.txt")


class Started:
    """A command started in a session of its own, so that it and everything it started stop by its PID."""

    def __init__(self, command: list, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_until_answering(self, port: int, deadline: float) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.process.poll() is None, f"exited with {self.process.returncode}: {self.log()}"
            try:
                if get(port, "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not answering after {deadline}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def assert_first_calls_succeed(port: int) -> None:
    """A new user's first calls: each answers 200 JSON at once, /v4 included (no cold-pool 503)."""
    for path, kind in [("/v1/random", int), ("/v4/random?type=float", float), ("/v4/random", int)]:
        status, body, headers = get(port, path)
        assert (status, headers["content-type"]) == (200, "application/json"), (path, status, body)
        assert type(body["number"]) is kind, (path, body)


def test_a_venv_of_requirements_txt_alone_has_no_dev_package(server_bin):
    result = subprocess.run([server_bin / "python", "-c", "import pytest"], capture_output=True, timeout=60)
    assert result.returncode != 0, "pytest is installed: the venv is not made from requirements.txt alone"


def test_gunicorn_from_a_venv_of_requirements_txt_serves_every_stage_at_once(server_bin, tmp_path):
    port = free_port()
    env = clean_environment(UNIQUERAND_BIND=f"127.0.0.1:{port}", UNIQUERAND_INSTANCE_PATH=str(tmp_path / "instance"))
    # The project's own gunicorn.conf.py, found in the working directory, as for `gunicorn wsgi:app`.
    server = Started([server_bin / "gunicorn", "wsgi:app"], REPO, env, tmp_path / "gunicorn.log")
    try:
        server.wait_until_answering(port, SERVE_TIMEOUT)
        assert_first_calls_succeed(port)
        for stage in ("v2", "v3", "v5"):
            status, body, _ = get(port, f"/{stage}/random?type=float")
            assert status == 200 and type(body["number"]) is float, (stage, status, body)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_flask_init_shards_from_a_venv_of_requirements_txt(server_bin, tmp_path):
    env = clean_environment(UNIQUERAND_INSTANCE_PATH=str(tmp_path / "instance"), UNIQUERAND_V4_SHARD_SIZE="1500")
    result = subprocess.run(
        [server_bin / "flask", "init-shards"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "int_shard_0.db: added 1500, available 1500" in result.stdout, result.stdout


# The bench venv (matplotlib) is slow to build: its two tests are in the slow tier.
@pytest.mark.parametrize("venv", ["server_bin", pytest.param("bench_bin", marks=pytest.mark.slow)])
def test_flask_bench_help_from_the_venvs_the_readme_names(request, venv):
    bin_folder = request.getfixturevalue(venv)
    result = subprocess.run(
        [bin_folder / "flask", "bench", "--help"], cwd=REPO, env=clean_environment(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--stages" in result.stdout


def test_flask_bench_from_a_venv_of_requirements_txt_runs_without_the_chart(server_bin, tmp_path):
    # The README sends users of `scripts/serve`'s venv to `flask bench`: it has no matplotlib, so no chart.
    env = clean_environment(UNIQUERAND_INSTANCE_PATH=str(tmp_path / "instance"))
    command = [server_bin / "flask", "bench", "--stages", "v1", "--types", "int", "--duration", "1", "--warmup", "0",
               "--client", "python", "--concurrency", "2", "--output", tmp_path / "out"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no chart: matplotlib is not installed" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "/v1 int" in result.stdout and list((tmp_path / "out").glob("bench-*.json"))
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
def test_the_bench_venv_draws_the_chart(bench_bin, tmp_path):
    # The one thing requirements-bench.txt adds: matplotlib for the PNG chart.
    code = "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot"
    result = subprocess.run([bench_bin / "python", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def tracked_tree(destination: Path) -> Path:
    """A copy of the files git would check out (tracked or new, not ignored), as a clean clone has them, but
    with this working tree's edits: no .venv, no instance data."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def test_scripts_serve_on_a_clean_copy_creates_its_venv_and_serves(tmp_path):
    tree = tracked_tree(tmp_path / "tree")
    assert not (tree / ".venv").exists()
    port = free_port()
    # No UNIQUERAND_INSTANCE_PATH: the copy's own instance/ folder, as for a new user.
    server = Started([tree / "scripts" / "serve", "--bind", f"127.0.0.1:{port}"], tree, clean_environment(),
                     tmp_path / "serve.log")  # fmt: skip
    try:
        server.wait_until_answering(port, INSTALL_TIMEOUT)
        assert_first_calls_succeed(port)
    finally:
        server.stop()
    assert (tree / ".venv" / "bin" / "gunicorn").exists()
    assert (tree / "instance" / "v1" / "used_numbers.json").exists()
