"""The chart: numbers/s against numbers already issued, one line per stage, type and batch size (PNG)."""

from __future__ import annotations

from pathlib import Path

from uniquerand.bench.results import Row


def draw_chart(path: Path, rows: list[Row], title: str) -> None:
    """Writes a PNG; matplotlib is imported here so that the rest of the bench runs without it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(10, 6), dpi=110)
    series: dict[str, list[Row]] = {}
    for row in rows:
        if row.stage != "healthz":
            series.setdefault(row.label, []).append(row)
    for label, points in series.items():
        points.sort(key=lambda row: row.prefill)
        style = "--" if points[0].count else "-"
        xs = [row.prefill for row in points]
        ys = [max(row.numbers_per_s, 0.1) for row in points]
        axes.plot(xs, ys, style, marker="o", label=label)
    healthz = sorted((row for row in rows if row.stage == "healthz"), key=lambda row: row.prefill)
    if healthz:
        axes.plot([row.prefill for row in healthz], [row.ok_per_s for row in healthz], ":", color="grey",
                  marker="s", label="/healthz (requests/s)")  # fmt: skip
    axes.set_xscale("symlog", linthresh=1000)
    axes.set_yscale("log")
    axes.set_xlabel("numbers already issued per stage and type (prefill)")
    axes.set_ylabel("numbers served per second (log)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)
