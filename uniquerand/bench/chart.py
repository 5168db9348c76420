"""The chart: numbers/s against numbers already issued, one line per stage, type and batch size (PNG)."""

from __future__ import annotations

from pathlib import Path

from uniquerand.bench.results import Row


def draw_chart(path: Path, rows: list[Row], title: str) -> None:
    """Writes a PNG; matplotlib is imported here so that the rest of the bench runs without it. Rows of the
    server on PostgreSQL (`/v3-pg int`) share their stage's colour, drawn with triangles and thinner lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import FuncFormatter

    figure, axes = pyplot.subplots(figsize=(10, 6), dpi=110)
    # One colour pair per stage (dark int, light float); batches dashed in the same colour.
    palette = pyplot.get_cmap("tab20").colors
    stage_order: list[str] = []
    series: dict[str, list[Row]] = {}
    # Legend grouped by stage: singles then batches, int before float.
    for row in sorted(rows, key=lambda row: (row.stage, row.server, row.count or 0, row.type != "int")):
        if row.stage != "healthz":
            series.setdefault(row.label, []).append(row)
    for label, points in series.items():
        points.sort(key=lambda row: row.prefill)
        first = points[0]
        if first.stage not in stage_order:
            stage_order.append(first.stage)
        colour = palette[(2 * stage_order.index(first.stage) + (first.type == "float")) % len(palette)]
        xs = [row.prefill for row in points]
        ys = [max(row.numbers_per_s, 0.1) for row in points]
        style = {"marker": "^", "linewidth": 1} if first.server else {"marker": "o"}
        axes.plot(xs, ys, "--" if first.count else "-", color=colour, label=label, **style)
    for server in sorted({row.server for row in rows}):
        healthz = sorted((row for row in rows if row.stage == "healthz" and row.server == server),
                         key=lambda row: row.prefill)  # fmt: skip
        if healthz:
            axes.plot([row.prefill for row in healthz], [row.ok_per_s for row in healthz], ":", color="grey",
                      marker="^" if server else "s", label=f"{healthz[0].label} (requests/s)")  # fmt: skip
    levels = sorted({row.prefill for row in rows})
    # symlog keeps the 0 level on a log axis; the linear part ends below the smallest real level.
    axes.set_xscale("symlog", linthresh=min([level for level in levels if level] or [1000]))
    axes.set_xticks(levels, [_short(level) for level in levels])
    axes.minorticks_off()
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.set_xlabel("numbers already issued per stage and type (prefill)")
    axes.set_ylabel("numbers served per second (log)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)


def _short(level: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if level >= size and level % (size // 10) == 0:
            return f"{level / size:g}{suffix}"
    return f"{level:,}"
