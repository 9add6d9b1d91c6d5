"""The ``megaset`` command line: one sub-command per stage, each reading the config.

Heavy libraries are imported inside the commands, so ``megaset --help`` stays fast.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from megaset.errors import MegasetError

__all__ = ["app", "main"]

app = typer.Typer(
    help="megaset: ntuples -> Rapidity-Mass Matrices -> channel-mixed Zarr stores -> anomaly scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML configuration; the built-in demo config when omitted."),
]


@contextmanager
def _connect(cfg):
    """The configured cluster's client, after saying what it is connected to."""
    from megaset.deploy.cluster import cluster_size, describe, open_client

    console.print(f"cluster: {describe(cfg.cluster)}")
    with open_client(cfg.cluster) as client:
        console.print(f"connected to {client.scheduler.address}: {cluster_size(client)}")
        yield client


def _config(path: Path | None, demo: str | None = None):
    from megaset.config import demo_config, load_config

    if demo is not None:
        if path is not None:
            msg = "give either --config or --demo, not both"
            raise typer.BadParameter(msg)
        return demo_config(demo)
    return load_config(path)


DemoOption = Annotated[
    str | None,
    typer.Option("--demo", help="A built-in demo instead of a config file: events (the default run) or jets."),
]


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


def _groups_table(title: str, groups: dict, events: str, chunks: str) -> Table:
    """Events and chunks per store group, from a stage summary's ``groups``."""
    table = Table(title=title)
    table.add_column("group")
    table.add_column("events", justify="right")
    table.add_column("chunks", justify="right")
    for name, group in groups.items():
        table.add_row(name, f"{group[events]:,}", f"{group[chunks]:,}")
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
        if cfg.inputs.kind == "jets":
            from megaset.pipeline.jets_simulate import simulate_jets

            written = simulate_jets(cfg.jets.simulate, progress=lambda n: bar.advance(task, n))
            n_events = bar.tasks[0].completed
            console.print(f"wrote {sum(map(len, written.values()))} files ({n_events:,.0f} jets) under "
                          f"{cfg.jets.simulate.output} in {time.perf_counter() - t0:.1f} s")
            return
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
    from megaset.pipeline.ingest import ingest as run_ingest

    cfg = _config(config)
    with _connect(cfg) as client:
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

    from megaset.storage.mix import mix as run_mix

    cfg = _config(config)
    with _connect(cfg) as client, Progress(console=console, transient=True) as bar:
        task = bar.add_task("mixing chunks", total=None)
        summary = run_mix(cfg, client, progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(_groups_table(f"store {cfg.store.url}", summary["groups"], "n_events", "n_chunks"))
    console.print(
        f"{summary['mb_written']:,.1f} MB written in {summary['seconds']:.1f} s"
        + (f"; {summary['resumed']} chunks were already done" if summary.get("resumed") else "")
    )


@app.command()
def verify(
    store: Annotated[str | None, typer.Argument(help="Store URL; default: store.url of the config.")] = None,
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


@app.command()
def train(
    config: ConfigOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train training.model on the store's train group (DDP ranks on the Dask workers)."""
    from megaset.training.trainer import train as run_train

    cfg = _config(config)

    def progress(entry: dict) -> None:
        mark = " *" if entry["improved"] else ""
        console.print(
            f"epoch {entry['epoch']:>3}  loss {entry['loss']:.5g}  val {entry['val_loss']:.5g}  "
            f"{entry['samples_per_s']:,.0f} samples/s{mark}", highlight=False,
        )

    with _connect(cfg) as client:
        summary = run_train(cfg, client, resume=resume, progress=progress)
    stopped = " (early stopping)" if summary.get("stopped_early") else ""
    rate = summary.get("samples_per_s")
    rate_text = f", {rate:,.0f} samples/s on {summary.get('world_size', 1)} rank(s)" if rate else ""
    console.print(f"{summary['model']}: {summary['epochs']} epochs{stopped}{rate_text}")
    for key in ("best_val_loss", "latent", "checkpoints", "loss_curve", "scree_plot"):
        if summary.get(key) is not None:
            console.print(f"  {key.replace('_', ' ')}: {summary[key]}", highlight=False)


def _auc_table(rows: list[dict]) -> Table:
    """Farina et al.'s Table I of a report: AUC with its uncertainty, E10, E100."""
    table = Table(title="anomaly detection (Farina et al. Table I)")
    for name in ("signal", "model", "AUC", "E10", "E100"):
        table.add_column(name, justify="left" if name in ("signal", "model") else "right")
    for row in rows:
        table.add_row(row["signal"], row["model"], f"{row['auc']:.3f} ± {row['auc_error']:.3f}",
                      f"{row['e10']:.3f}", f"{row['e100']:.3f}")
    return table


def _print_status(cfg) -> None:
    from megaset.stages import status as stage_status

    table = Table(title="stages (megaset run rebuilds the stale and missing ones, finishes the partial ones)")
    for name in ("stage", "state", "why"):
        table.add_column(name)
    colours = {"current": "green", "partial": "yellow", "stale": "red", "missing": "red"}
    for state in stage_status(cfg):
        table.add_row(state.name, f"[{colours[state.state]}]{state.state}[/]", state.reason)
    Console().print(table)


@app.command()
def status(config: ConfigOption = None, demo: DemoOption = None) -> None:
    """Each stage of `megaset run` as current, partial, stale (with the changed key) or missing,
    from the fingerprints its artefact records; runs nothing."""
    _print_status(_config(config, demo))


@app.command()
def run(
    config: ConfigOption = None, demo: DemoOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be rebuilt (megaset status).")] = False,
) -> None:
    """Every stage in order (simulate when no inputs are configured, ingest, mix, train, score,
    report): a stage whose artefact records the fingerprint of the current configuration and
    inputs is skipped, an interrupted one finished, a changed one rebuilt with everything after
    it. Ends with the AUC / E10 / E100 table. `--demo jets` runs the boosted-jet demo."""
    from megaset.run import run as run_all

    cfg = _config(config, demo)
    if dry_run:
        _print_status(cfg)
        return
    with _connect(cfg) as client:
        out = run_all(cfg, client, log=lambda line: console.print(line, highlight=False), status=True)
    total = sum(out["seconds"].values())
    if out["skipped"]:
        console.print(f"current, not rebuilt: {', '.join(out['skipped'])}", highlight=False)
    report_dir = cfg.report.output
    console.print(
        f"finished in {total:.1f} s. store: {cfg.store.url}; report: {report_dir}/report.md "
        f"(plots: {report_dir}/*.png and .pdf)"
    )
    if out.get("report"):
        console.print(_auc_table(out["report"]["auc_table"]))


study = typer.Typer(help="The thesis' and Farina et al.'s robustness tests, end to end.", no_args_is_help=True)
app.add_typer(study, name="study")


def _rows_table(title: str, key: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for column in (key, "auc", "e10", "e100"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row[key]:g}", *(f"{row[c]:.4f}" for c in ("auc", "e10", "e100")))
    return table


@study.command("channel-removal")
def study_channel_removal(
    channel: Annotated[str, typer.Argument(help="The background channel left out of training.")],
    workdir: Annotated[Path, typer.Option(help="Receives the derived staging area, store, models, report.")] = Path(
        "megaset-demo/studies/channel-removal"),
    config: ConfigOption = None,
) -> None:
    """Train without one background channel, then score it as a signal (thesis ch. 4)."""
    from megaset.studies.channel_removal import channel_removal

    cfg = _config(config)
    with _connect(cfg) as client:
        out = channel_removal(cfg, client, channel, workdir=workdir / channel)
    console.print(
        f"{out['channel']} left out of training of {out['model']}: AUC {out['auc']:.4f}, "
        f"E10 {out['e10']:.4f}, E100 {out['e100']:.4f}; store {out['store']}", highlight=False,
    )


@study.command("pt-altering")
def study_pt_altering(
    model: Annotated[str | None, typer.Option(help="Scored model; default training.model.")] = None,
    config: ConfigOption = None,
) -> None:
    """Scale the leading electron and muon pT by report.pt_factors and score the altered events."""
    from megaset.studies.pt_altering import pt_altering

    cfg = _config(config)
    out = pt_altering(cfg, model=model)
    console.print(_rows_table(f"pT altering, {out['model']} ({out['events']:,} {out['group']} events)",
                              "factor", out["rows"]))
    console.print(f"plots: {', '.join(map(str, out['plots'].values()))}", highlight=False)


@study.command("contamination")
def study_contamination(
    signal: Annotated[str, typer.Argument(help="The signal channel injected into train.")],
    fractions: Annotated[str, typer.Option(help="Comma-separated injected fractions.")] = "0,0.001,0.01,0.05",
    workdir: Annotated[Path, typer.Option(help="Receives one store per fraction.")] = Path(
        "megaset-demo/studies/contamination"),
    config: ConfigOption = None,
) -> None:
    """AUC, E10, E100 against the fraction of signal injected into train (Farina et al. IV)."""
    from megaset.studies.contamination import contamination

    cfg = _config(config)
    values = [float(f) for f in fractions.split(",")]
    with _connect(cfg) as client:
        out = contamination(cfg, client, signal=signal, fractions=values, workdir=workdir)
    console.print(_rows_table(f"contamination with {out['signal']}, {out['model']}", "fraction", out["rows"]))
    console.print(f"plot: {out['plot']}", highlight=False)


def main() -> None:
    """Console entry point: megaset errors print as one clear message and exit 1."""
    try:
        app()
    except MegasetError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(1)


# ---------------------------------------------------------------------------- score, query, report


@app.command()
def score(
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Name of the score columns; default training.model.")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint; default <training.output>/<model>/best.pt.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Score every chunk again.")] = False,
) -> None:
    """Write the reconstruction error of every event of the store, one Dask task per chunk."""
    from rich.progress import Progress

    from megaset.training.score import score as run_score

    cfg = _config(config)
    with _connect(cfg) as client, Progress(console=console, transient=True) as bar:
        task = bar.add_task("scoring chunks", total=None)
        summary = run_score(cfg, client, model=model, checkpoint=checkpoint, overwrite=overwrite,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(_groups_table(f"{summary['column']} in {cfg.store.url}", summary["groups"], "events", "chunks"))
    rate = f" ({summary['events_per_s']:,.0f} events/s)" if summary["events_scored"] else ""
    console.print(
        f"{summary['events_scored']:,} events scored with {summary['checkpoint']} in {summary['seconds']:.1f} s{rate}"
        + (f"; {summary['resumed']} chunks were already scored" if summary["resumed"] else "")
        + (f"; per-block errors: {', '.join(summary['blocks'])}" if summary["blocks"] else "")
    )


_QUERY_HELP = "\n\n".join([
    "SQL over one group of a store (columns: aux, weight, yield_weight, channel, event id, RMM cells, scores).",
    "weight: the event weight as stored, the group's share of its channel (train, val and test hold about 60, "
    "20 and 20 % of each background channel), so sum(weight) over test is about a fifth of the report's yields.",
    "yield_weight: the weight scaled to the whole sample as the report's yields are; sum(yield_weight) per "
    "channel of any group is the channel's expected yield: "
    "SELECT channel_name, sum(yield_weight) FROM test GROUP BY channel_name",
])


@app.command(help=_QUERY_HELP)
def query(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    sql: Annotated[str, typer.Argument(help='One SELECT over a group, e.g. "SELECT met FROM test WHERE met > 200".')],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the result to a .parquet or .csv file.")
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows shown on the terminal.")] = 20,
) -> None:
    """SQL over one group of a store; see ``_QUERY_HELP``."""
    from megaset.storage.query import export
    from megaset.storage.query import query as run_query

    if output is not None:
        path = export(store, sql, output)
        console.print(f"wrote {path}")
        return
    frame = run_query(store, sql)
    table = Table()
    for name in frame.columns:
        table.add_column(name, justify="right")
    for row in frame.head(rows).iter_rows():
        table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    Console().print(table)
    console.print(f"{frame.height:,} rows" + (f", {rows} shown" if frame.height > rows else ""))


@app.command()
def report(
    config: ConfigOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder; default report.output.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="A scored model to report (repeatable); default all.")] = None,
) -> None:
    """Plots, tables and significances of the scored store: report.md, report.json and PNGs."""
    from megaset.reporting import write_report

    cfg = _config(config)
    summary = write_report(cfg, out_dir=output, models=model or None)
    console.print(_auc_table(summary["auc_table"]))
    console.print(f"report: {summary['markdown']} and {summary['json']}")
