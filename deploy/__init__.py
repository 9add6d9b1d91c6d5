"""Clusters from configuration: :mod:`.cluster` opens the client of every stage, :mod:`.kube`
and :mod:`.condor` build Kubernetes and HTCondor workers, :mod:`.render` prints what a config
would launch. The container image and manifests live beside this package (Dockerfile,
kubernetes/, htcondor/)."""
