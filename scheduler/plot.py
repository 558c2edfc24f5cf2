"""PNG timelines of simulator runs (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scheduler.simulator import RoundStat  # noqa: E402


def timeline(runs: dict[str, list[RoundStat]], path: str | Path, title: str, job: str | None = None,
             shifts: list[int] | None = None) -> Path:
    """One figure per scenario: compute share (the chosen config's cost), delay vs the
    constraint (log scale), and relative F1, one line per planner, for one job."""
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for name, stats in runs.items():
        jid = job or (stats[0].job if stats else None)
        st = [s for s in stats if s.job == jid]
        r = [s.round for s in st]
        axes[0].step(r, [s.cost_share for s in st], where="post", label=name)
        axes[1].plot(r, [min(s.delay_s, 10.0) for s in st], marker=".", label=name)
        axes[2].plot(r, [s.f1 for s in st], label=name)
    any_stats = next(iter(runs.values()))
    jid = job or any_stats[0].job
    st = [s for s in any_stats if s.job == jid]
    axes[1].step([s.round for s in st], [s.constraint_s for s in st], where="post", color="k", ls="--", label="constraint")
    axes[0].set_ylabel("compute / golden")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("window delay (s)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("relative F1")
    axes[2].set_xlabel("round")
    for ax in axes:
        for x in shifts or []:
            ax.axvline(x, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper right", fontsize=8, ncol=3)
    bayes = runs.get("bayes")
    if bayes:
        last = [s for s in bayes if s.job == jid][-1]
        axes[0].set_title(f"{title} ({jid}); bayes ends on {last.config}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
