"""`vdag profile`: time this node's DNN services with a progress bar and store the result
where the tracker's planner reads it (data_dir/profiles/<node>.json)."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services import node_profile
from services.settings import settings_from_env
from services.sources import SourceError, open_source

FRAMES = 8


def run_profile(args: argparse.Namespace) -> int:
    console = Console()
    settings = settings_from_env(node=args.node, device=args.device)
    try:
        source = open_source(args.video)
    except SourceError as exc:
        console.print(f"[red]cannot read {args.video}: {exc}[/red]")
        return 1
    frames = []
    for frame in source.frames(0.0):
        frames.append(frame.image)
        if len(frames) >= FRAMES:
            break
    source.close()
    if not frames:
        console.print(f"[red]{args.video} has no frames[/red]")
        return 1
    from tasks.worker_state import service_context  # the worker's own model loading and threads

    ctx = service_context(settings)
    cases = node_profile.cases(frames[0].shape[0])
    with Progress(console=console) as progress:
        task = progress.add_task(f"profiling node {settings.node} ({ctx.device})", total=len(cases))
        profile = node_profile.profile_node(
            frames, ctx, settings.node, repeats=args.repeats,
            progress=lambda row: progress.update(task, advance=1, description=(
                f"{row['service']} {row['grade'] or ''} {row['width']}x{row['height']}: {row['service_s'] * 1000:.0f} ms")))
    path = node_profile.save(profile, settings.data_dir / "profiles")
    table = Table(title=f"node {settings.node}: median service time per frame")
    for col in ("service", "grade", "frame", "ms"):
        table.add_column(col)
    for row in profile["rows"]:
        table.add_row(row["service"], row["grade"] or "-", f"{row['width']}x{row['height']}",
                      f"{row['service_s'] * 1000:.1f}")
    console.print(table)
    console.print(f"stored {path}; the tracker's planner starts from it for jobs on node {settings.node}")
    return 0
