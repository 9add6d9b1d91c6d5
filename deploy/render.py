"""Print what a config would launch: ``python -m megaset.deploy.render CONFIG.yaml``.

For ``kind: kubernetes`` the ``DaskCluster`` manifest, followed by a ``DaskWorkerGroup`` for each
further pool and the cluster's ``NetworkPolicy`` (``kubectl apply -f`` it to keep a cluster running
between runs, e.g. for ``kind: address``); for ``kind: htcondor`` the submit description of one
worker job (of each pool). The manifests in deploy/kubernetes/daskcluster*.yaml and
deploy/htcondor/workers-pools.sub are this output for the example configs beside them.
"""

from __future__ import annotations

import sys

from megaset.config import ClusterConfig, load_config
from megaset.errors import ConfigError, MegasetError

__all__ = ["render", "main"]


def render(cfg: ClusterConfig, source: str = "the config") -> str:
    """The manifest or job script of ``cfg`` as text.

    Raises
    ------
    ConfigError
        For ``kind: local`` or ``address``, which launch nothing to render.
    """
    if cfg.kind == "kubernetes":
        import yaml

        from megaset.deploy.kube import kube_cluster_spec, kube_network_policy, kube_worker_groups
        from megaset.deploy.tls import tls_enabled

        header = (
            f"# DaskCluster rendered from {source} by `python -m megaset.deploy.render`.\n"
            "# Edit the config and render again rather than editing this file.\n"
            "# `kubectl apply -f` it to keep a cluster running between runs (docs/deploy.md).\n"
        )
        if tls_enabled(cfg):
            namespace = f" {cfg.kubernetes.namespace}" if cfg.kubernetes.namespace else ""
            header += (
                f"# Its pods read their TLS certificates from the Secret {cfg.tls.secret}, made once with\n"
                f"#   python -m megaset.deploy.tls {cfg.tls.secret}{namespace} | kubectl apply -f -\n"
            )
        docs = [kube_cluster_spec(cfg), *kube_worker_groups(cfg), kube_network_policy(cfg)]
        return header + yaml.safe_dump_all(docs, sort_keys=False)
    if cfg.kind == "htcondor":
        from megaset.deploy.condor import htcondor_job_script

        return htcondor_job_script(cfg)
    msg = f"cluster.kind={cfg.kind!r} in {source} launches nothing to render; use kubernetes or htcondor"
    raise ConfigError(msg)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: render the config named by the only argument to stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m megaset.deploy.render CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render(load_config(args[0]).cluster, args[0]))
    except MegasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
