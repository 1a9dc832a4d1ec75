"""The /stats chart: live accuracy over time and per digit, as PNG bytes."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from storage.repository import Stats


def stats_chart(stats: Stats) -> bytes:
    """Runs in worker threads: a Figure of its own, never pyplot, whose global state is not thread-safe."""
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    if stats.by_day:
        days = [day[5:] for day, _, _ in stats.by_day]
        left.plot(days, [acc * 100 for _, _, acc in stats.by_day], marker="o")
        left.tick_params(axis="x", rotation=45)
    left.set(title="Live accuracy by day", ylabel="% right", ylim=(0, 101))
    digits = list(stats.per_digit)
    right.bar(digits, [stats.per_digit[d] * 100 for d in digits], color="tab:green")
    right.set(title="Accuracy per digit", xlabel="digit", ylabel="% right", ylim=(0, 101))
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()
