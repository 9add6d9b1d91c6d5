"""`python -m megaset.deploy.render`: what a config would launch, printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from megaset.config import load_config
from megaset.deploy.kube import kube_cluster_spec, kube_network_policy
from megaset.deploy.render import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_kubernetes_config_renders_its_daskcluster(capsys):
    config = DEPLOY / "kubernetes" / "config-gpu.yaml"
    assert main([str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# DaskCluster rendered from {config} by")
    cfg = load_config(config).cluster
    assert list(yaml.safe_load_all(out)) == [kube_cluster_spec(cfg), kube_network_policy(cfg)]
    assert "python -m megaset.deploy.tls megaset-dask-tls megaset | kubectl apply -f -" in out


def test_htcondor_config_renders_its_job_script(capsys):
    assert main([str(DEPLOY / "htcondor" / "config-object-store.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/bin/env condor_submit\n")
    assert "container_image = docker://ghcr.io/megaset/megaset:0.1.0\n" in out


def test_local_config_and_bad_usage_are_refused(tmp_path, capsys):
    config = tmp_path / "local.yaml"
    config.write_text("cluster: {kind: local}\n")
    assert main([str(config)]) == 1
    assert f"cluster.kind='local' in {config} launches nothing to render" in capsys.readouterr().err
    assert main([]) == 2
    assert "usage: python -m megaset.deploy.render CONFIG.yaml" in capsys.readouterr().err


def test_runs_as_a_module():
    config = DEPLOY / "htcondor" / "config-shared-fs.yaml"
    done = subprocess.run([sys.executable, "-m", "megaset.deploy.render", str(config)],
                          capture_output=True, text=True, check=True)
    assert "RequestDisk = floor(MY.DaskWorkerDisk / 1024)" in done.stdout
