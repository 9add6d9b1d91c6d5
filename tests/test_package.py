"""The package as installed: the public API (the ``__all__`` of every public module, pinned here
so that a change of what a module exports is a deliberate change of this file) and the examples
in the docstrings, run as doctests."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _modules() -> dict[str, bool]:
    """``{installed name: is a package}`` for every module pyproject installs. The layer folders
    are mapped to ``megaset.*``: they are walked through the imported packages, never collected as
    folders, which would import ``pipeline/x.py`` a second time as ``pipeline.x``."""
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]
    found = dict.fromkeys(packages, True)
    for package in packages:
        path = importlib.import_module(package).__path__
        found |= {f"{package}.{m.name}": False for m in pkgutil.iter_modules(path) if not m.ispkg}
    return dict(sorted(found.items()))


MODULES = _modules()
PUBLIC_MODULES = [name for name, is_package in MODULES.items()
                  if not is_package and not any(part.startswith("_") for part in name.split("."))]
WITH_ALL = [name for name in MODULES if hasattr(importlib.import_module(name), "__all__")]
WITH_EXAMPLES = [name for name in MODULES
                 if any(t.examples for t in doctest.DocTestFinder().find(importlib.import_module(name)))]

PUBLIC_API = {
    "megaset.cli": ["app", "main"],
    "megaset.config": [
        "AdaptConfig", "AdversaryConfig", "ArchitectureConfig", "ChannelInput", "ClusterConfig", "CollectionSchema",
        "CombineConfig", "CompressorConfig", "Config", "ContaminationConfig", "DDPConfig", "DEMOS",
        "EarlyStoppingConfig", "ElectronSelection", "HTCondorConfig", "InputsConfig", "JET_SAMPLES", "JetImageConfig",
        "JetSchemaConfig", "JetSelection", "JetSelectionConfig", "JetSimulateConfig", "JetsConfig", "KubernetesConfig",
        "LeptonSelection", "LoaderConfig", "MetSchema", "MuonSelection",
        "OBJECT_SOURCES", "PASS_ROLES", "PhotonSelection", "PoolConfig", "QualityField",
        "RMMConfig", "RMMObject", "RemoteConfig", "ReportConfig", "SEARCH_SECTIONS", "SchemaConfig",
        "ScoringConfig", "SelectionConfig", "SimulateConfig", "SplitsConfig", "StoreConfig", "TLSConfig",
        "TrainingConfig",
        "WeightsConfig", "charged_rmm_objects", "demo_config", "load_config",
    ],
    "megaset.config_dump": ["defaults_yaml", "json_schema", "resolved_yaml"],
    "megaset.config_overrides": ["apply_overrides", "parse_override"],
    "megaset.redaction": ["REDACTED", "redact"],
    "megaset.deploy.cluster": [
        "ClusterSize", "cluster_size", "dashboard_link", "describe", "open_client", "release_memory",
    ],
    "megaset.deploy.condor": ["htcondor_job_script", "start_htcondor_cluster"],
    "megaset.deploy.kube": [
        "kube_cluster_spec", "kube_network_policy", "kube_worker_groups", "quantity", "start_kube_cluster",
    ],
    "megaset.deploy.pools": [
        "CPU_STAGES", "add_pools", "gpu_box", "placed", "pool_sections", "resources_arg", "stage_resources",
        "worker_resources",
    ],
    "megaset.deploy.render": ["main", "render"],
    "megaset.deploy.tls": [
        "MOUNT", "SECRET_KEYS", "TLSFiles", "configured_files", "generate", "made_security", "main", "secret_manifest",
        "tls_enabled",
    ],
    "megaset.deploy.worker_env": ["WORKER_MALLOC_ENV"],
    "megaset.loopback": ["HTTPServer", "XRootDServer", "http_server", "s3_server", "xrootd_server"],
    "megaset.warmup": [
        "WarmWorker", "import_stage_modules", "kernel_stats", "main", "usable_numba_cache", "warm_kernels",
    ],
    "megaset.errors": [
        "BranchError", "CheckpointError", "ConfigError", "DamagedChunkError", "IncompleteStoreError", "InputFileError",
        "MegasetError", "NonFiniteInputError", "OutputLockedError", "StoreError", "StoreKeyError", "TrainingError",
    ],
    "megaset.pipeline.ingest": ["IngestSummary", "ingest", "ingest_record"],
    "megaset.pipeline.inputs": [
        "FileInfo", "expand_files", "file_identities", "inspect_file", "inspect_files", "resolve_channels"
    ],
    "megaset.pipeline.open_files": ["OPEN_TREES", "OpenTrees"],
    "megaset.pipeline.units": ["Statistic", "check_units", "statistics"],
    "megaset.pipeline.jet_features": [
        "FEATURE_WIDTH", "jet_images", "jet_kinematics", "leading_constituents", "nsubjettiness",
    ],
    "megaset.pipeline.jet_processor": ["JetProcessor", "feature_names", "jet_columns", "jet_selection"],
    "megaset.pipeline.jets_simulate": [
        "SAMPLES", "TREE", "generate", "is_simulated_jets", "jet_inputs", "simulate_jets", "simulate_jets_record",
        "simulated_jets_record"
    ],
    "megaset.pipeline.objects": ["EventArrays", "Jagged"],
    "megaset.pipeline.processor": ["RMMProcessor", "base_columns", "piece_columns"],
    "megaset.pipeline.remote": [
        "Source", "bearer_token", "expand", "protocol", "reads_whole", "require_client", "stored_checksum",
        "uproot_options",
    ],
    "megaset.pipeline.retry": ["Failure", "RetryingWork", "classify", "damaged", "retrying_executor", "with_retries"],
    "megaset.pipeline.rmm": ["build_rmm", "feature_names", "rmm_inputs"],
    "megaset.pipeline.schema": ["check_branches", "nonfinite_events", "read_events", "required_branches"],
    "megaset.pipeline.selection": ["Selection", "cutflow_steps", "select"],
    "megaset.pipeline.weights": ["absurd_message", "absurd_weights", "weight_stats"],
    "megaset.pipeline.simulate": [
        "CHANNELS", "ChannelSpec", "demo_inputs", "event_counts", "generate", "is_simulated", "simulate",
        "simulate_record", "simulated_record", "write_ntuple"
    ],
    "megaset.report.jets": [
        "FARINA_TABLE_I", "PAIRWISE_FILE", "decorrelation", "farina_published", "jet_report", "mass_sculpting",
        "separated_cells",
    ],
    "megaset.report.markdown": [
        "add_study", "family_table", "finite", "skipped_files", "skipped_section", "studies", "study_records",
        "table", "without_events_notes", "working_point_cell",
        "write_markdown",
    ],
    "megaset.report.metrics": [
        "WORKING_POINTS", "asimov_significance", "auc", "auc_error", "background_uncertainty", "best_cut",
        "best_significance_improvement", "binned_mean", "effective_events", "efficiency_error", "has_positive_weight",
        "region_cuts",
        "roc_curve",
        "separation_matrix", "signal_efficiency", "significance", "threshold_scan", "weighted_median",
        "weighted_quantile", "working_point", "yield_summary",
    ],
    "megaset.report.plots": [
        "Component", "Panel", "curves", "heatmap", "random_reference", "roc_curves", "significance_curves",
        "stacked_panels",
    ],
    "megaset.report.anomaly": ["anomaly_table", "signals_without_events"],
    "megaset.report.report": ["axis_label", "cut_label", "error_axis", "report"],
    "megaset.report.samples": ["BACKGROUND_GROUP", "Sample", "load_samples", "mass_variable"],
    "megaset.report.style": ["DATA_COLOUR", "EVENTS_PER_BIN", "PALETTE", "Style", "process_colours"],
    "megaset.extras": ["EXTRAS", "missing_extra", "require", "require_for_url"],
    "megaset.provenance": ["IGNORED", "SECTIONS", "changes", "fingerprint_of", "make_record", "record", "stage_config"],
    "megaset.stages": ["Stage", "StageState", "StepProgress", "assess", "chain", "fingerprint", "status"],
    "megaset.progress": ["Progress", "StageProgress", "steps"],
    "megaset.reporting": ["REPORT_JSON", "report_record", "training_records", "write_report"],
    "megaset.run": ["STAGES", "outputs_locked", "run", "stage_counts", "written"],
    "megaset.storage.backend": [
        "checked_reads", "chunk_exists", "damaged_chunks", "float_fill", "is_local", "open_group", "reach",
        "remove_tree", "writing",
    ],
    "megaset.storage.codecs": ["compressors"],
    "megaset.storage.compact": ["CompactRows"],
    "megaset.storage.csr": ["csr_attrs", "csr_path", "index_dtype", "read_csr", "write_csr"],
    "megaset.storage.layout": ["BLOCKS", "block_masks", "matrix_side"],
    "megaset.storage.lock": ["holder", "lock_url", "locked"],
    "megaset.storage.mix": ["MixJob", "mix", "mix_record", "prepare_mix"],
    "megaset.storage.mix_chunk": ["build_chunk"],
    "megaset.storage.plan": [
        "BACKGROUND_GROUPS", "ChannelSequence", "ChunkTask", "GroupPlan", "MixPlan", "Segment", "Stream",
        "channel_roles", "make_plan", "rng", "split_counts",
    ],
    "megaset.storage.query": ["EVENT_ID_FIELDS", "YIELD_WEIGHT", "export", "query", "query_lazy", "scan", "sql_name"],
    "megaset.storage.quotas": ["chunk_quotas", "chunk_sizes"],
    "megaset.storage.scores": ["SCORE_GROUP", "is_score_column", "score_column", "scored_models", "split_score_name"],
    "megaset.storage.staging": [
        "BLOCK_ROWS", "LAYOUT_VERSION", "finish_staging", "init_staging", "is_sparse", "list_pieces", "open_piece",
        "piece_attrs", "piece_key", "piece_schema", "piece_selections", "read_piece", "remove_staging",
        "staging_attrs", "unpack", "write_piece"
    ],
    "megaset.storage.stats": ["N_ROWS", "PASS_ROWS", "combine", "finalize", "partial_stats"],
    "megaset.storage.store": [
        "ADDED_CHUNK_EVENTS", "MIX_PREFIX", "SCHEMA_VERSION", "Store", "StoreGroup", "channel_flags",
        "column_dimensions", "open_store", "remove_store",
    ],
    "megaset.storage.tasks": ["MORE_MEMORY", "PausedWorkers", "map_chunks"],
    "megaset.storage.verify": ["verify"],
    "megaset.studies.channel_removal": ["channel_removal"],
    "megaset.studies.common": ["UPSTREAM", "anomaly_row", "auc_cell", "score_fingerprint", "study_record",
                               "study_upstream", "style", "train_and_score"],
    "megaset.studies.contamination": ["contamination", "contamination_params"],
    "megaset.studies.pairwise": ["pairwise", "pairwise_params"],
    "megaset.studies.pt_altering": ["altered_rmms", "pt_altering", "scale_leading"],
    "megaset.terminal": ["LOGGER", "configure_logging", "make_console"],
    "megaset.training.adversary": ["Adversarial", "reverse_gradient"],
    "megaset.training.checkpoint": [
        "FORMAT", "load_checkpoint", "load_model", "rng_state", "save_checkpoint", "set_rng_state",
    ],
    "megaset.training.ddp": ["choose_backend", "local_rank", "local_ranks", "process_group", "rank_device",
                             "run_on_dask", "worker_resources"],
    "megaset.training.ensemble": ["AEEnsemble"],
    "megaset.training.export": ["FORMATS", "default_path", "export_model", "scoring_module"],
    "megaset.training.flow": ["RealNVP"],
    "megaset.training.graph": ["FIELDS", "GraphAE", "OneOff", "TauRatio", "node_features"],
    "megaset.training.loader": ["ChunkDataset", "current_shard"],
    "megaset.training.loop": [
        "RESUME_KEYS", "check_resumable", "checkpoint_payload", "evaluate", "event_weights", "fit", "model_inputs",
        "output_paths", "recorded_summary", "summary", "train_epoch", "train_record", "training_finished",
        "weight_norm"
    ],
    "megaset.training.models": ["Autoencoder", "ConvAE", "DenseAE", "DenseVAE", "per_event_loss"],
    "megaset.training.pca": ["PCAModel", "fit_pca", "suggest_latent"],
    "megaset.training.plots": ["loss_curve", "scree_plot"],
    "megaset.training.registry": [
        "CUTS", "JET_MODELS", "MODELS", "NOT_RECONSTRUCTING", "SCORE_QUANTITY", "build_model", "input_column",
        "resolve_architecture", "score_quantity",
    ],
    "megaset.training.scaling": ["DeviceScaling", "Scaling"],
    "megaset.training.score": [
        "checkpoint_digest", "checkpoint_path", "chunk_runs", "latent_column", "reconstruction_errors", "run_name",
        "score", "score_record", "scored_record", "scoring_device",
    ],
    "megaset.training.svdd": ["DeepSVDD", "EPSILON"],
    "megaset.training.combine": [
        "METHODS", "combine_record", "combine_scores", "log_survival", "min_p", "quantile_table", "rank_mean",
    ],
    "megaset.training.trainer": ["train"],
}


def test_every_public_module_is_pinned():
    assert sorted(PUBLIC_API) == PUBLIC_MODULES


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_api(name):
    assert sorted(importlib.import_module(name).__all__) == PUBLIC_API[name]


@pytest.mark.parametrize("name", WITH_ALL)
def test_every_exported_name_exists_once(name):
    module = importlib.import_module(name)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    runner, report = doctest.DocTestRunner(), []
    for test in doctest.DocTestFinder().find(importlib.import_module(name)):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
