"""`vdag export`: export models to this node's fastest runtime before the first job needs
them (a worker otherwise exports on first use, in the background, serving with PyTorch
meanwhile). Exports land where workers look: beside the weights, or data_dir/exports."""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services import runtimes
from services.models import pick_device
from services.settings import settings_from_env
from services.weights import resolve_weights, trained_person_weights


def run_export(args: argparse.Namespace) -> int:
    console = Console()
    settings = settings_from_env(node=args.node, device=args.device)
    device = pick_device(settings.device)
    try:
        runtime = runtimes.choose_runtime(args.runtime, device)
    except runtimes.RuntimeUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    if runtime == "pytorch":
        console.print(f"nothing to export: models on {device} run in PyTorch (install openvino for the CPU)")
        return 0
    names = args.weights or [settings.person_weights or trained_person_weights() or "n"]
    failed = 0
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        for name in names:
            try:
                weights = resolve_weights(name)
            except (ValueError, FileNotFoundError) as exc:
                console.print(f"[red]{name}: {exc}[/red]")
                failed += 1
                continue
            root = runtimes.exports_dir(weights, settings.data_dir / "exports")
            found = runtimes.cached_export(weights, runtime, root)
            if found is not None:
                console.print(f"{name}: already exported to {runtimes.label(runtime)}: {found}")
                continue
            task = progress.add_task(f"exporting {name} to {runtimes.label(runtime)} {runtimes.version(runtime)}")
            t0 = time.perf_counter()
            path = runtimes.export(weights, runtime, root, device)
            progress.update(task, description=f"{name}: exported in {time.perf_counter() - t0:.1f} s",
                            completed=1, total=1)
            console.print(f"{name} -> {path}")
    return 1 if failed else 0
