"""The ``megaset`` command line: one sub-command per stage, each reading the config.

Heavy libraries are imported inside the commands, so ``megaset --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from megaset.errors import MegasetError

app = typer.Typer(
    help="megaset: ntuples -> Rapidity-Mass Matrices -> channel-mixed Zarr stores -> anomaly scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML configuration; the built-in demo config when omitted."),
]


def _config(path: Path | None):
    from megaset.config import load_config

    return load_config(path)


def _cutflow_table(channels: dict) -> Table:
    table = Table(title="ingest: events per channel")
    table.add_column("channel")
    table.add_column("read", justify="right")
    table.add_column("selected", justify="right")
    table.add_column("weighted selected", justify="right")
    table.add_column("efficiency", justify="right")
    for name, c in channels.items():
        weighted = c["cutflow"][-1][2] if c["cutflow"] else 0.0
        eff = c["n_selected"] / c["n_read"] if c["n_read"] else 0.0
        table.add_row(name, f"{c['n_read']:,}", f"{c['n_selected']:,}", f"{weighted:,.1f}", f"{eff:.1%}")
    return table


@app.command()
def simulate(config: ConfigOption = None) -> None:
    """Write simulated ntuples (2-lepton + MET backgrounds and SUSY signals) as ROOT files."""
    import time

    from rich.progress import Progress

    from megaset.pipeline.simulate import simulate as run_simulation

    cfg = _config(config)
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("simulating", total=None)
        written = run_simulation(
            cfg.simulate, tree=cfg.inputs.tree, lumi_ifb=cfg.inputs.lumi_ifb,
            progress=lambda n: bar.advance(task, n),
        )
        n_events = bar.tasks[0].completed
    seconds = time.perf_counter() - t0
    n_files = sum(len(v) for v in written.values())
    console.print(
        f"wrote {n_files} files ({n_events:,.0f} events, {len(written)} channels) under "
        f"{cfg.simulate.output} in {seconds:.1f} s ({n_events / seconds:,.0f} events/s)"
    )


@app.command()
def ingest(config: ConfigOption = None) -> None:
    """Select events, build RMMs and write per-channel staging arrays, chunk by chunk on Dask."""
    from megaset.deploy.cluster import describe, open_client
    from megaset.pipeline.ingest import ingest as run_ingest

    cfg = _config(config)
    console.print(f"cluster: {describe(cfg.cluster)}")
    with open_client(cfg.cluster) as client:
        summary = run_ingest(cfg, client, status=True, log=console.print)
    console.print(_cutflow_table(summary.channels))
    resumed = sum(c["resumed"] for c in summary.channels.values())
    console.print(
        f"{summary.n_read:,} events read from {summary.files} files, {summary.n_selected:,} selected, "
        f"in {summary.seconds:.1f} s ({summary.rate:,.0f} events/s)"
        + (f"; {resumed} chunks were already done" if resumed else "")
        + (f"; {len(summary.skipped)} files skipped" if summary.skipped else "")
        + f"\nstaging: {cfg.store.staging}"
    )


@app.command()
def mix(config: ConfigOption = None) -> None:
    """Mix the staging arrays into the store: train / val / test / signal / data groups."""
    from rich.progress import Progress

    from megaset.deploy.cluster import describe, open_client
    from megaset.storage.mix import mix as run_mix

    cfg = _config(config)
    console.print(f"cluster: {describe(cfg.cluster)}")
    with open_client(cfg.cluster) as client, Progress(console=console, transient=True) as bar:
        task = bar.add_task("mixing chunks", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = run_mix(cfg, client, progress=progress)
    table = Table(title=f"store {cfg.store.url}")
    table.add_column("group")
    table.add_column("events", justify="right")
    table.add_column("chunks", justify="right")
    for name, group in summary["groups"].items():
        table.add_row(name, f"{group['n_events']:,}", f"{group['n_chunks']:,}")
    console.print(table)
    console.print(
        f"{summary['mb_written']:,.1f} MB written in {summary['seconds']:.1f} s"
        + (f"; {summary['resumed']} chunks were already done" if summary.get("resumed") else "")
    )


@app.command()
def verify(
    store: Annotated[Optional[str], typer.Argument(help="Store URL; default: store.url of the config.")] = None,
    config: ConfigOption = None,
) -> None:
    """Re-check the store invariants: chunk mixtures, counts, unique event ids, finite values, scores."""
    from megaset.storage.verify import verify as run_verify

    url = store or _config(config).store.url
    problems = run_verify(url)
    for problem in problems:
        console.print(f"[red]FAIL[/red] {problem}", highlight=False)
    if problems:
        console.print(f"{len(problems)} problems in {url}")
        raise typer.Exit(1)
    console.print(f"[green]OK[/green] {url}: every invariant holds")


def main() -> None:
    """Console entry point: megaset errors print as one clear message and exit 1."""
    try:
        app()
    except MegasetError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(1)
