"""Clusters from configuration: :mod:`.cluster` opens the client of every stage, :mod:`.kube`
and :mod:`.condor` build Kubernetes and HTCondor workers, :mod:`.worker_env` is the
environment every worker starts with, :mod:`.render` prints what a config would launch. The
container image and manifests live beside this package (Dockerfile, kubernetes/, htcondor/)."""
