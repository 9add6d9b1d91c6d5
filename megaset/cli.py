"""The ``megaset`` command line: one sub-command per stage, each reading the config.

Options before the sub-command apply to it: ``--config/-c`` and ``--set`` (which every
sub-command also takes after its name), ``-v/-q`` and ``--version``. Messages go to stderr through
:mod:`logging`, results (tables, query rows, configurations) to stdout; both are plain text
when they are not a terminal (see :mod:`megaset.terminal`).

Heavy libraries are imported inside the commands, so ``megaset --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from megaset import __version__
from megaset.errors import MegasetError
from megaset.terminal import configure_logging, make_console

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["app", "main"]

log = logging.getLogger("megaset.cli")


def _bare_flags(params: list) -> list:
    for param in params:
        if (getattr(param, "is_flag", False) or getattr(param, "count", False)) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: no "<bool>" beside it in --help
    return params


class _Group(TyperGroup):
    """Typer's command group, with flags listed in ``--help`` without a value type."""

    def get_params(self, ctx: Any) -> list:
        return _bare_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, TyperGroup):
            _bare_flags(command.get_params(ctx))
        return command


app = typer.Typer(
    cls=_Group,
    # Help and usage errors in rich panels on a terminal; elsewhere click's plain text, which a log keeps
    # readable (a panel is cut at 80 columns).
    rich_markup_mode="rich" if sys.stderr.isatty() else None,
    help="megaset: ntuples -> Rapidity-Mass Matrices -> channel-mixed Zarr stores -> anomaly scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class _Session:
    """What the options before the sub-command set, and the consoles of this invocation."""

    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    quiet: bool = False
    console: Console = field(default_factory=make_console)
    stdout: Console = field(default_factory=lambda: make_console(stderr=False))

    def start(self, config: Path | None, overrides: list[str], *, quiet: bool) -> None:
        """A new invocation: its global options, and consoles on the streams it writes to."""
        self.config, self.overrides, self.quiet = config, overrides, quiet
        self.console, self.stdout = make_console(), make_console(stderr=False)


_session = _Session()


def _console() -> Console:
    """The console of messages and tables on stderr."""
    return _session.console


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML configuration; the built-in demo config when omitted."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE",
                 help="Set one configuration key, e.g. --set training.epochs=3 (repeatable)."),
]


def _show_version(value: bool) -> None:
    if value:
        print(f"megaset {__version__}")
        raise typer.Exit


@app.callback()
def _options(
    config: ConfigOption = None,
    overrides: SetOption = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, show_default=False,
                                         help="More messages: -v debug and Dask's warnings, -vv Dask's info.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings, errors and results only.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """megaset: ntuples -> Rapidity-Mass Matrices -> channel-mixed Zarr stores -> anomaly scores."""
    if verbose and quiet:
        msg = "give -v or -q, not both"
        raise typer.BadParameter(msg)
    _session.start(config, list(overrides or []), quiet=quiet)
    configure_logging(_session.console, -1 if quiet else verbose)


def _progress() -> Progress:
    """A transient progress display on the message console; none with ``-q``, nor where the
    messages do not go to a terminal (a pipe, a CI log keeps the plain lines alone)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = _console()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=_session.quiet or not console.is_terminal)


@contextmanager
def _bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """One progress bar, as the ``progress(done, total)`` callback the library functions take."""
    with _progress() as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _epoch_text(epoch: int, epochs: int, info: Mapping[str, Any]) -> str:
    """An epoch's figures, as the progress display and the log show them."""
    return (f"epoch {epoch}/{epochs}  loss {info['loss']:.5g}  val {info['val_loss']:.5g}  "
            f"{info['samples_per_s']:,.0f} samples/s")


class _StageBars:
    """The progress display of ``megaset run``: the bar of the stage running now, and for
    training its last epoch's figures (a :data:`megaset.progress.StageProgress`). Each epoch is
    also a log line, as in ``megaset train``: where the bar is not drawn (a pipe, a CI log) the
    lines alone say how training goes; ``-q`` drops them with the other progress messages."""

    def __init__(self, bar: Progress):
        self.bar = bar
        self.stage: str | None = None
        self.task: Any = None

    def __call__(self, stage: str, done: int, total: int | None, info: Mapping[str, Any]) -> None:
        if stage != self.stage:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.stage, self.task = stage, self.bar.add_task(stage, total=total)
        text = stage
        if "loss" in info:
            text = f"{stage}  {_epoch_text(done, total or 0, info)}"
            log.info("%s", text)
        self.bar.update(self.task, completed=done, total=total, description=text)


def _locked(cfg, *stages: str, places: dict[str, str] | None = None):
    """The locks of what ``stages`` write (:func:`megaset.run.outputs_locked`), taken before a
    cluster starts, so that a second writer refuses at once."""
    import shlex

    from megaset.run import outputs_locked

    return outputs_locked(cfg, stages, places=places, command=shlex.join(["megaset", *sys.argv[1:]]))


def _reach(cfg, url: str, key: str = "store.url") -> str:
    """``url``, once its object store answered (:func:`megaset.storage.backend.reach`): a reader's
    first request to an unreachable one ends in one line, not in a client's retries and traceback."""
    from megaset.storage.backend import reach

    reach(url, key=key, timeout_s=cfg.store.connect_timeout_s)
    return url


@contextmanager
def _connect(cfg):
    """The configured cluster's client, after saying what it is connected to."""
    from megaset.deploy.cluster import cluster_size, dashboard_link, describe, open_client

    log.info("cluster: %s", describe(cfg.cluster))
    with open_client(cfg.cluster) as client:
        log.info("connected to %s: %s", client.scheduler.address, cluster_size(client))
        link = dashboard_link(client, cfg.cluster)
        if link:
            log.info("dashboard: %s", link)
        yield client


def _machine_cluster(cfg):
    """On a node with GPUs, a cluster section left at its defaults becomes a CPU pool and a GPU pool
    (:func:`megaset.deploy.pools.gpu_box`), said in the first lines; elsewhere ``cfg`` as it is."""
    import os

    from megaset.config import ClusterConfig

    if cfg.cluster != ClusterConfig():
        return cfg
    import torch
    from distributed.system import MEMORY_LIMIT

    from megaset.deploy.pools import gpu_box

    cores, gpus = len(os.sched_getaffinity(0)), torch.cuda.device_count()
    box = gpu_box(cores, gpus, MEMORY_LIMIT)
    if box is None:
        return cfg
    log.info("this node has %d cores and %d GPU%s: ingest and mix on %d CPU workers, training and scoring on "
             "%d GPU worker%s (one rank per GPU); a cluster: section in the config chooses otherwise",
             cores, gpus, "" if gpus == 1 else "s", box.pools["cpu"].workers, gpus, "" if gpus == 1 else "s")
    return cfg.replace(cluster=box.model_dump(mode="json", exclude_defaults=True))


def _config_path(config: Path | None) -> Path | None:
    """``--config`` after the sub-command, else the one before it."""
    if config is not None and _session.config is not None and config != _session.config:
        msg = f"--config given twice ({_session.config} before the command, {config} after it): give it once"
        raise typer.BadParameter(msg)
    return config or _session.config


def _config(path: Path | None, overrides: list[str] | None = None, demo: str | None = None):
    """The configuration of the command: its file or demo, then every ``--set`` in order."""
    from megaset.config import demo_config, load_config
    from megaset.config_overrides import apply_overrides

    path = _config_path(path)
    log.debug("configuration: %s", path or demo or "the defaults")
    if demo is not None:
        if path is not None:
            msg = "give either --config or --demo, not both"
            raise typer.BadParameter(msg)
        cfg, source = demo_config(demo), f"the built-in {demo} demo"
    else:
        cfg, source = load_config(path), repr(str(path)) if path else "the defaults"
    return apply_overrides(cfg, [*_session.overrides, *(overrides or [])], source)


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
def simulate(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Write simulated ntuples (2-lepton + MET backgrounds and SUSY signals) as ROOT files."""
    import time

    from megaset.pipeline.simulate import simulate as run_simulation

    cfg = _config(config, overrides)
    t0 = time.perf_counter()
    out = cfg.jets.simulate.output if cfg.inputs.kind == "jets" else cfg.simulate.output
    key = "jets.simulate.output" if cfg.inputs.kind == "jets" else "simulate.output"
    with _locked(cfg, places={key: out}), _progress() as bar:
        task = bar.add_task("simulating", total=None)
        if cfg.inputs.kind == "jets":
            from megaset.pipeline.jets_simulate import simulate_jets

            written = simulate_jets(cfg.jets.simulate, progress=lambda n: bar.advance(task, n))
            n_events = bar.tasks[0].completed
            _console().print(f"wrote {sum(map(len, written.values()))} files ({n_events:,.0f} jets) under "
                             f"{cfg.jets.simulate.output} in {time.perf_counter() - t0:.1f} s")
            return
        written = run_simulation(
            cfg.simulate, tree=cfg.inputs.tree, lumi_ifb=cfg.inputs.lumi_ifb,
            progress=lambda n: bar.advance(task, n),
        )
        n_events = bar.tasks[0].completed
    seconds = time.perf_counter() - t0
    n_files = sum(len(v) for v in written.values())
    _console().print(
        f"wrote {n_files} files ({n_events:,.0f} events, {len(written)} channels) under "
        f"{cfg.simulate.output} in {seconds:.1f} s ({n_events / seconds:,.0f} events/s)"
    )


@app.command()
def ingest(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Select events, build RMMs and write per-channel staging arrays, chunk by chunk on Dask."""
    from megaset.deploy.pools import placed
    from megaset.pipeline.ingest import ingest as run_ingest

    cfg = _config(config, overrides)
    with (_locked(cfg, "ingest"), _connect(cfg) as client, placed(cfg.cluster, "ingest"),
          _bar("ingesting chunks") as bar):
        summary = run_ingest(cfg, client, progress=bar, log=log.info)
    _console().print(_cutflow_table(summary.channels))
    resumed = sum(c["resumed"] for c in summary.channels.values())
    _console().print(
        f"{summary.n_read:,} events read from {summary.files} files, {summary.n_selected:,} selected, "
        f"in {summary.seconds:.1f} s ({summary.rate:,.0f} events/s)"
        + (f"; {resumed} chunks were already done" if resumed else "")
        + (f"; {len(summary.skipped)} files skipped" if summary.skipped else "")
        + f"\nstaging: {cfg.store.staging}"
    )


@app.command()
def mix(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Mix the staging arrays into the store: train / val / test / signal / data groups."""
    from megaset.deploy.pools import placed
    from megaset.storage.mix import mix as run_mix

    cfg = _config(config, overrides)
    with _locked(cfg, "mix"), _connect(cfg) as client, placed(cfg.cluster, "mix"), _bar("mixing chunks") as bar:
        summary = run_mix(cfg, client, progress=bar)
    _console().print(_groups_table(f"store {cfg.store.url}", summary["groups"], "n_events", "n_chunks"))
    _console().print(
        f"{summary['mb_written']:,.1f} MB written in {summary['seconds']:.1f} s"
        + (f"; {summary['resumed']} chunks were already done" if summary.get("resumed") else "")
    )


@app.command()
def verify(
    store: Annotated[str | None, typer.Argument(help="Store URL; default: store.url of the config.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Re-check the store invariants: chunk mixtures, counts, unique event ids, finite values, scores."""
    from megaset.storage.verify import verify as run_verify

    cfg = _config(config, overrides)
    url = _reach(cfg, store or cfg.store.url, "STORE" if store else "store.url")
    problems = run_verify(url)
    for problem in problems:
        _console().print(f"[red]FAIL[/red] {problem}", highlight=False)
    if problems:
        _console().print(f"{len(problems)} problems in {url}")
        raise typer.Exit(1)
    _console().print(f"[green]OK[/green] {url}: every invariant holds")


@app.command()
def train(
    config: ConfigOption = None,
    overrides: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train training.model on the store's train group (DDP ranks on the Dask workers)."""
    from megaset.training.trainer import train as run_train

    cfg = _config(config, overrides)

    epochs = cfg.training.epochs

    with _locked(cfg, "train"), _connect(cfg) as client, _progress() as bar:
        task = bar.add_task("training", total=epochs)

        def progress(entry: dict) -> None:
            text = _epoch_text(entry["epoch"], epochs, entry)
            log.info("%s%s", text, " *" if entry["improved"] else "")
            bar.update(task, completed=entry["epoch"], description=f"training  {text}")

        summary = run_train(cfg, client, resume=resume, progress=progress)
    stopped = " (early stopping)" if summary.get("stopped_early") else ""
    rate = summary.get("samples_per_s")
    rate_text = f", {rate:,.0f} samples/s on {summary.get('world_size', 1)} rank(s)" if rate else ""
    _console().print(f"{summary['model']}: {summary['epochs']} epochs{stopped}{rate_text}")
    for key in ("best_val_loss", "latent", "checkpoints", "loss_curve", "scree_plot"):
        if summary.get(key) is not None:
            _console().print(f"  {key.replace('_', ' ')}: {summary[key]}", highlight=False)


def _auc_table(summary: dict, search: str | None = None) -> Table:
    """Farina et al.'s Table I of a report: AUC with its uncertainty, E10, E100, E1000 with
    theirs (marked where too few background MC events remain); under it, the signals left out
    for want of a selected event with a positive weight."""
    from megaset.report.markdown import without_events_notes, working_point_cell

    title = "anomaly detection (Farina et al. Table I)"
    notes = without_events_notes(summary.get("signals_without_events") or [])
    table = Table(title=f"{search}: {title}" if search else title, caption="\n".join(notes) or None,
                  caption_justify="left")
    for name in ("signal", "model", "AUC", "E10", "E100", "E1000"):
        table.add_column(name, justify="left" if name in ("signal", "model") else "right")
    for row in summary["auc_table"]:
        table.add_row(row["signal"], row["model"], f"{row['auc']:.3f} ± {row['auc_error']:.3f}",
                      *(working_point_cell(row, name) for name in ("e10", "e100", "e1000")))
    return table


def _count(n: int, what: str) -> str:
    """``n`` of ``what`` (a plural noun, then any words), in the singular for one.

    >>> _count(1, "events selected"), _count(2_650, "events selected")
    ('1 event selected', '2,650 events selected')
    """
    if n == 1:
        noun, _, rest = what.partition(" ")
        what = " ".join(filter(None, (noun.removesuffix("s"), rest)))
    return f"{n:,} {what}"


def _stages_table(stages: list[dict], search: str | None = None) -> Table:
    """What ``megaset run`` did per stage: done, resumed or skipped, its time, what it made."""
    table = Table(title=f"search {search}: stages" if search else "stages")
    for name in ("stage", "state", "time", "made"):
        table.add_column(name, justify="right" if name == "time" else "left")
    for stage in stages:
        seconds = stage["seconds"]
        made = ", ".join(_count(n, what) for what, n in stage["counts"].items())
        table.add_row(stage["name"], stage["state"], "-" if seconds is None else f"{seconds:.1f} s", made or "-")
    return table


def _print_status(cfg, search: str | None = None) -> None:
    from megaset.stages import status as stage_status

    _reach(cfg, cfg.store.staging, "store.staging_url")
    _reach(cfg, cfg.store.url)
    title = "stages (megaset run rebuilds the stale and missing ones, finishes the partial ones)"
    table = Table(title=f"search {search}: {title}" if search else title)
    for name in ("stage", "state", "why"):
        table.add_column(name)
    colours = {"current": "green", "partial": "yellow", "stale": "red", "missing": "red"}
    for state in stage_status(cfg):
        table.add_row(state.name, f"[{colours[state.state]}]{state.state}[/]", state.reason)
    _session.stdout.print(table)
    for name in cfg.searches:
        _print_status(cfg.search(name), name)


@app.command()
def status(config: ConfigOption = None, overrides: SetOption = None, demo: DemoOption = None) -> None:
    """Each stage of `megaset run` as current, partial, stale (with the changed key) or missing.

    From the fingerprints its artefact records; runs nothing.
    """
    _print_status(_config(config, overrides, demo))


@app.command()
def run(
    config: ConfigOption = None, overrides: SetOption = None, demo: DemoOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be rebuilt (megaset status).")] = False,
) -> None:
    """Every stage in order; ends with the AUC / E10 / E100 / E1000 table.

    The stages: simulate (when no inputs are configured), ingest, mix, train, score, the training and scoring of
    every other model a combination of scoring.combine names (by default deep-svdd, for ae-svdd), the
    combinations, report. A stage whose
    artefact records the fingerprint of the current configuration and inputs is skipped, an interrupted one
    finished, a changed one rebuilt with everything after it. Then every search of `searches` (another
    selection or RMM on the same inputs), into its own store and report. `--demo jets` runs the boosted-jet demo.
    """
    from megaset.run import STAGES
    from megaset.run import run as run_all

    cfg = _config(config, overrides, demo)
    if dry_run:
        _print_status(cfg)
        return
    cfg = _machine_cluster(cfg)
    with _locked(cfg, *STAGES), _connect(cfg) as client, _progress() as bar:
        out = run_all(cfg, client, log=log.info, progress=_StageBars(bar))
    total = sum(out["seconds"].values())
    if not _session.quiet:
        _console().print(_stages_table(out["stages"]))
    report_dir = cfg.report.output
    _console().print(
        f"finished in {total:.1f} s. store: {cfg.store.url}; report: {report_dir}/report.md "
        f"(plots: {report_dir}/*.png and .pdf)"
    )
    if out.get("report"):
        _console().print(_auc_table(out["report"]))
    for name, searched in (out.get("searches") or {}).items():
        derived = cfg.search(name)
        if not _session.quiet:
            _console().print(_stages_table(searched["stages"], name))
        _console().print(f"search {name}: store {derived.store.url}; report {derived.report.output}/report.md",
                         highlight=False)
        if searched.get("report"):
            _console().print(_auc_table(searched["report"], f"search {name}"))


@app.command()
def warmup() -> None:
    """Compile every numba kernel of ingest into numba's cache (NUMBA_CACHE_DIR, else beside the sources).

    Run once after installing (the container image runs it while building): a fresh worker then loads the
    kernels in a fraction of a second instead of compiling them for tens of seconds.
    """
    from megaset.warmup import main as warm

    warm()


study = typer.Typer(cls=_Group, rich_markup_mode=app.rich_markup_mode, no_args_is_help=True,
                    help="The thesis' and Farina et al.'s robustness tests, end to end; once run, megaset run "
                    "keeps each one current (megaset status lists it).")
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
    overrides: SetOption = None,
) -> None:
    """Train without one background channel, then score it as a signal (thesis ch. 4)."""
    from megaset.studies.channel_removal import channel_removal

    cfg = _config(config, overrides)
    with _connect(cfg) as client, _bar(f"channel removal of {channel}: steps") as bar:
        out = channel_removal(cfg, client, channel, workdir=workdir / channel, progress=bar)
    _console().print(
        f"{out['channel']} left out of training of {out['model']}: AUC {out['auc']:.4f}, "
        f"E10 {out['e10']:.4f}, E100 {out['e100']:.4f}; store {out['store']}", highlight=False,
    )


@study.command("pt-altering")
def study_pt_altering(
    model: Annotated[str | None, typer.Option(help="Scored model; default training.model.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Scale the leading electron and muon pT by report.pt_factors and score the altered events."""
    from megaset.studies.pt_altering import pt_altering

    cfg = _config(config, overrides)
    with _bar("pT altering: files, factors, figures") as bar:
        out = pt_altering(cfg, model=model, progress=bar)
    _console().print(_rows_table(f"pT altering, {out['model']} ({out['events']:,} {out['group']} events)",
                              "factor", out["rows"]))
    _console().print(f"plots: {', '.join(map(str, out['plots'].values()))}", highlight=False)


@study.command("contamination")
def study_contamination(
    signal: Annotated[str, typer.Argument(help="The signal channel injected into train.")],
    fractions: Annotated[str, typer.Option(help="Comma-separated injected fractions.")] = "0,0.001,0.01,0.05",
    workdir: Annotated[Path, typer.Option(help="Receives one store per fraction.")] = Path(
        "megaset-demo/studies/contamination"),
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """AUC, E10, E100 against the fraction of signal injected into train (Farina et al. IV)."""
    from megaset.studies.contamination import contamination

    cfg = _config(config, overrides)
    values = [float(f) for f in fractions.split(",")]
    with _connect(cfg) as client, _bar(f"contamination with {signal}: mix, train, score per fraction") as bar:
        out = contamination(cfg, client, signal=signal, fractions=values, workdir=workdir, progress=bar)
    _console().print(_rows_table(f"contamination with {out['signal']}, {out['model']}", "fraction", out["rows"]))
    _console().print(f"plot: {out['plot']}", highlight=False)


def main() -> None:
    """Console entry point: megaset errors, and a missing optional dependency (named with the
    extra that installs it), print as one clear message and exit 1."""
    from megaset.extras import missing_extra

    try:
        app()
    except MegasetError as err:
        _fail(err)
    except ImportError as err:
        extra = missing_extra(err)
        if extra is None:
            raise
        _fail(extra)


def _fail(err: MegasetError) -> NoReturn:
    _console().print("[red]error:[/red]", escape(str(err)), highlight=False)
    sys.exit(1)


# ---------------------------------------------------------------------------- score, query, report


@app.command()
def score(
    config: ConfigOption = None,
    overrides: SetOption = None,
    model: Annotated[str | None, typer.Option(help="Name of the score columns; default training.model.")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint; default <training.output>/<model>/best.pt.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Score every chunk again.")] = False,
    combine: Annotated[str | None, typer.Option(
        help="Write the combination scoring.combine.NAME of models already scored, as score/NAME, instead.",
    )] = None,
) -> None:
    """Write the reconstruction error of every event of the store, one Dask task per chunk."""
    from megaset.training.score import score as run_score

    cfg = _config(config, overrides)
    if combine is not None:
        _combine(cfg, combine, overwrite)
        return
    with _locked(cfg, "score"), _connect(cfg) as client, _bar("scoring chunks") as bar:
        summary = run_score(cfg, client, model=model, checkpoint=checkpoint, overwrite=overwrite, progress=bar)
    _console().print(_groups_table(f"{summary['column']} in {cfg.store.url}", summary["groups"], "events", "chunks"))
    rate = f" ({summary['events_per_s']:,.0f} events/s)" if summary["events_scored"] else ""
    _console().print(
        f"{summary['events_scored']:,} events scored with {summary['checkpoint']} in {summary['seconds']:.1f} s{rate}"
        + (f"; {summary['resumed']} chunks were already scored" if summary["resumed"] else "")
        + (f"; per-block errors: {', '.join(summary['blocks'])}" if summary["blocks"] else "")
    )


def _combine(cfg, name: str, overwrite: bool) -> None:
    from megaset.training.combine import METHODS, combine_scores

    with _locked(cfg, "score"), _connect(cfg) as client, _bar(f"combining {name}") as bar:
        summary = combine_scores(cfg, client, name, overwrite=overwrite, progress=bar)
    _console().print(_groups_table(f"{summary['column']} in {cfg.store.url}", summary["groups"], "events", "chunks"))
    _console().print(
        f"{summary['events_scored']:,} events given {METHODS[summary['method']][1]} of {', '.join(summary['models'])} "
        f"in {summary['seconds']:.1f} s"
        + (f"; {summary['resumed']} chunks were already written" if summary["resumed"] else ""))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="The trained model, e.g. ae-deep: <training.output>/<MODEL>/best.pt.")],
    fmt: Annotated[Literal["onnx", "torchscript"], typer.Option("--format", "-f", help="The file format.")] = "onnx",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File to write; default model.onnx or model.torchscript.pt beside the checkpoint.",
    )] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint; default <training.output>/<MODEL>/best.pt.")
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Write a trained model that takes raw rows of the store (scaling included) and returns the
    reconstruction error per event, for use without megaset (ONNX Runtime, torch.jit.load)."""
    from megaset.training.export import export_model
    from megaset.training.score import checkpoint_path

    path = checkpoint or checkpoint_path(_config(config, overrides), model)
    out = export_model(path, output, fmt)
    _console().print(
        f"wrote {out['path']} ({fmt}): input {out['input']!r} float32 [events, {out['n_features']}], the raw "
        f"{out['input_column']} rows as stored; output {out['output']!r} float32 [events], the reconstruction error "
        f"(largest relative difference to the torch model {out['max_deviation']:.2g})", highlight=False)


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
    words: Annotated[list[str], typer.Argument(
        metavar="[STORE] SQL", show_default=False,
        help='One SELECT over a group, e.g. "SELECT met FROM test WHERE met > 200", over store.url of the config, '
        "or over STORE when it is given first.")],
    config: ConfigOption = None,
    overrides: SetOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the result to a .parquet or .csv file.")
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows shown on the terminal.")] = 20,
    columns: Annotated[int, typer.Option(
        help="Columns shown at most; past it, the columns empty in the rows shown are left out first.")] = 16,
) -> None:
    """SQL over one group of a store; see ``_QUERY_HELP``."""
    from megaset.storage.query import export
    from megaset.storage.query import query as run_query
    from megaset.storage.store import open_store

    if len(words) > 2:
        msg = f"give the SQL as one argument (in quotes), after the store if any; got {len(words)} arguments"
        raise typer.BadParameter(msg)
    cfg = _config(config, overrides)
    store = _reach(cfg, words[0], "STORE") if len(words) == 2 else _reach(cfg, cfg.store.url)
    sql = words[-1]
    if output is not None:
        path = export(store, sql, output)
        _console().print(f"wrote {path}")
        return
    frame = run_query(store, sql)
    shown = frame.head(rows)
    names = _shown_columns(shown, columns, set(open_store(store).feature_names) if shown.width > columns else set())
    table = Table()
    for name in names:
        table.add_column(name, justify="right")
    for row in shown.select(names).iter_rows():
        table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    _session.stdout.print(table)
    _console().print(f"{frame.height:,} rows" + (f", {rows} shown" if frame.height > rows else ""))
    if len(names) < frame.width:
        _console().print(
            f"{len(names)} of {frame.width} columns shown (the event's own columns first, then the RMM cells with "
            "values in these rows): name the columns in the SELECT, raise --columns, or write every column with "
            "--output result.parquet",
            highlight=False)


def _shown_columns(frame: Any, limit: int, cells: set[str]) -> list[str]:
    """At most ``limit`` columns of ``frame``, in its order: the columns that are not RMM ``cells``
    first, then the cells with a value in these rows; cells of zeros only (most cells of most events)
    and columns of nulls only come last."""
    if frame.width <= limit:
        return list(frame.columns)

    def rank(name: str) -> int:
        column = frame[name]
        if column.null_count() == len(column) or (
                column.dtype.is_float() and not bool((column.fill_null(0) != 0).any())):
            return 2
        return 1 if name in cells else 0

    keep = set(sorted(frame.columns, key=rank)[:limit])  # a stable sort: the frame's order within a rank
    return [name for name in frame.columns if name in keep]


@app.command()
def report(
    config: ConfigOption = None,
    overrides: SetOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder; default report.output.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="A scored model to report (repeatable); default all.")] = None,
) -> None:
    """Plots, tables and significances of the scored store: report.md, report.json and PNGs."""
    from megaset.reporting import write_report

    cfg = _config(config, overrides)
    _reach(cfg, cfg.store.url)
    with (_locked(cfg, places={"report --output": str(output)}) if output else _locked(cfg, "report"),
          _bar("report: samples, models, figures") as bar):
        summary = write_report(cfg, out_dir=output, models=model or None, progress=bar)
    _console().print(_auc_table(summary))
    _console().print(f"report: {summary['markdown']} and {summary['json']}")


@app.command("config")
def config_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    demo: DemoOption = None,
    defaults: Annotated[bool, typer.Option(
        "--defaults", help="Every key at its default, as YAML commented with what each means.")] = False,
    schema: Annotated[bool, typer.Option(
        "--schema", help="The JSON schema of a configuration file (for editors that check YAML).")] = False,
) -> None:
    """Print the configuration a command would run with, the commented defaults, or the JSON schema.

    Without --defaults or --schema: the configuration file (or demo), every --set applied and every default
    filled in, as YAML.
    """
    from megaset.config_dump import defaults_yaml, json_schema, resolved_yaml

    if defaults and schema:
        msg = "give --defaults or --schema, not both"
        raise typer.BadParameter(msg)
    if defaults or schema:
        options = {"--config": _config_path(config), "--set": overrides or _session.overrides, "--demo": demo}
        given = [name for name, value in options.items() if value]
        if given:
            flag = "--defaults" if defaults else "--schema"
            msg = f"{flag} describes the model, not a configuration: drop {given[0]}"
            raise typer.BadParameter(msg)
        text = defaults_yaml() if defaults else json_schema()
    else:
        text = resolved_yaml(_config(config, overrides, demo))
    _session.stdout.print(text, end="", markup=False, highlight=False, soft_wrap=True)
