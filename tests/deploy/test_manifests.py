"""The files under deploy/: Kubernetes manifests validated offline, HTCondor files, Dockerfile."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from megaset.config import ClusterConfig, KubernetesConfig, load_config
from megaset.deploy.condor import htcondor_job_script
from megaset.deploy.kube import kube_cluster_spec, kube_network_policy, kube_worker_groups
from megaset.deploy.tls import SECRET_KEYS, main, secret_manifest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBE = DEPLOY / "kubernetes"
CONDOR = DEPLOY / "htcondor"
K8S_VERSION = "1.37.0"

KUBE_FILES = sorted(p.name for p in KUBE.glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resource(kind: str) -> dict:
    """The one resource of that kind among the Kubernetes manifests."""
    found = [d for name in KUBE_FILES for d in documents(KUBE / name) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def crd_validator(crd_file: str) -> jsonschema.Draft202012Validator:
    """The schema of one of the operator's CRDs, with its Kubernetes definitions resolved offline.

    The CRD shipped in dask-kubernetes refers to the core API (PodSpec, ServiceSpec) through
    ``python://k8s_crd_resolver/...``, which the operator's build resolves; here those
    definitions come from kubernetes-validate's strict schemas of the same API objects.
    """
    crd_dir = resources.files("dask_kubernetes") / "operator" / "customresources"
    crd = yaml.safe_load((crd_dir / crd_file).read_text())
    templates = yaml.safe_load((crd_dir / "templates.yaml").read_text())
    k8s_dir = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    k8s = json.loads((k8s_dir / "_definitions.json").read_text())["$defs"]
    registry = Registry().with_resources([
        ("python://dask_kubernetes/operator/customresources/templates.yaml",
         Resource.from_contents(templates, default_specification=DRAFT202012)),
        # Both spellings: the CRD says #/definitions/..., kubernetes-validate's own refs #/$defs/...
        ("python://k8s_crd_resolver/schemata/k8s-1.21.1.json",
         Resource.from_contents({"definitions": k8s, "$defs": k8s}, default_specification=DRAFT202012)),
    ])
    (version,) = crd["spec"]["versions"]
    return jsonschema.Draft202012Validator(version["schema"]["openAPIV3Schema"], registry=registry)


@pytest.fixture(scope="module")
def daskcluster_validator():
    return crd_validator("daskcluster.yaml")


@pytest.fixture(scope="module")
def daskworkergroup_validator():
    return crd_validator("daskworkergroup.yaml")


# ------------------------------------------------------------------ every manifest validates


@pytest.mark.parametrize("name", KUBE_FILES)
def test_every_kubernetes_file_validates(name, daskcluster_validator, daskworkergroup_validator):
    """Resources against the Kubernetes 1.37 schemas (strict: unknown fields are errors),
    DaskClusters against the operator's CRD, megaset configs against megaset's own model."""
    docs = documents(KUBE / name)
    assert docs, f"{name} is empty"
    for doc in docs:
        if "kind" not in doc:
            load_config(KUBE / name)
        elif doc["kind"] == "DaskCluster":
            daskcluster_validator.validate(doc)
        elif doc["kind"] == "DaskWorkerGroup":
            daskworkergroup_validator.validate(doc)
        elif doc["kind"] == "Kustomization":
            listed = doc["resources"] + [f.split("=")[-1] for g in doc["configMapGenerator"] for f in g["files"]]
            assert all((KUBE / f).is_file() for f in listed), listed
        else:
            assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.37"


def test_kubernetes_validation_catches_mistakes():
    job = copy.deepcopy(resource("Job"))
    job["spec"]["template"]["spec"]["containers"][0]["resourcess"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resourcess"):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    job = copy.deepcopy(resource("Job"))
    job["spec"]["backoffLimit"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError, match="three"):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_crd_validation_catches_mistakes(daskcluster_validator):
    spec = documents(KUBE / "daskcluster.yaml")[0]
    broken = copy.deepcopy(spec)
    del broken["spec"]["worker"]
    with pytest.raises(jsonschema.ValidationError, match="'worker' is a required property"):
        daskcluster_validator.validate(broken)
    broken = copy.deepcopy(spec)
    broken["spec"]["worker"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(jsonschema.ValidationError, match="imagePullPolicyy"):
        daskcluster_validator.validate(broken)
    broken = copy.deepcopy(spec)
    broken["spec"]["worker"]["replicas"] = "eight"
    with pytest.raises(jsonschema.ValidationError, match="'eight' is not of type 'integer'"):
        daskcluster_validator.validate(broken)


@pytest.mark.parametrize(
    "cluster",
    [
        {"kind": "kubernetes"},
        {"kind": "kubernetes", "gpus_per_worker": 2, "threads_per_worker": 3, "memory_per_worker": "1.5 GB",
         "kubernetes": {"secret": "s3", "service_account": "worker", "node_selector": {"gpu": "yes"},
                        "tolerations": [{"key": "gpu", "operator": "Exists", "tolerationSeconds": 60}],
                        "scheduler_cores": 0.5, "env": {"A": "1"}}},
    ],
)
def test_rendered_specs_validate_against_the_crd(cluster, daskcluster_validator):
    daskcluster_validator.validate(kube_cluster_spec(ClusterConfig.model_validate(cluster)))


@pytest.mark.parametrize(("manifest", "config"), [("daskcluster.yaml", "config.yaml"),
                                                  ("daskcluster-gpu.yaml", "config-gpu.yaml")])
def test_daskcluster_manifests_are_the_example_configs_rendered(manifest, config):
    """Whoever edits a config and forgets to re-render the manifest is told here."""
    cfg = load_config(KUBE / config).cluster
    assert documents(KUBE / manifest) == [kube_cluster_spec(cfg), kube_network_policy(cfg)]
    assert f"rendered from deploy/kubernetes/{config}" in (KUBE / manifest).read_text()


# ------------------------------------------------------------------ the pieces fit together


def test_pools_manifest_is_the_example_config_rendered(daskworkergroup_validator):
    """A CPU pool as the cluster's own worker group, the GPU pool as a DaskWorkerGroup of that cluster."""
    committed = documents(KUBE / "daskcluster-pools.yaml")
    cfg = load_config(KUBE / "config-pools.yaml").cluster
    assert committed == [kube_cluster_spec(cfg), *kube_worker_groups(cfg), kube_network_policy(cfg)]
    cluster, group, _ = committed
    assert [d["kind"] for d in committed] == ["DaskCluster", "DaskWorkerGroup", "NetworkPolicy"]
    assert group["spec"]["cluster"] == cluster["metadata"]["name"] == "megaset-pools"
    assert group["metadata"]["name"] == "megaset-pools-gpu"
    cpu, gpu = cluster["spec"]["worker"], group["spec"]["worker"]
    assert (cpu["replicas"], gpu["replicas"]) == (14, 1)
    cpu_args, gpu_args = (w["spec"]["containers"][0]["args"] for w in (cpu, gpu))
    assert cpu_args[cpu_args.index("--resources") + 1] == "CPU=1"
    assert gpu_args[gpu_args.index("--resources") + 1] == "GPU=1"
    assert "nvidia.com/gpu" not in cpu["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    broken = copy.deepcopy(group)
    broken["spec"]["worker"]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        daskworkergroup_validator.validate(broken)


def test_driver_job_runs_megaset_with_the_configmap():
    job = resource("Job")
    kustomization = resource("Kustomization")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["megaset", "run", "--config", "/etc/megaset/config.yaml"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = [n for n, v in volumes.items() if "configMap" in v]
    assert mounts[name]["mountPath"] == "/etc/megaset" and mounts[name]["readOnly"] is True
    (generator,) = kustomization["configMapGenerator"]
    assert volumes[name]["configMap"]["name"] == generator["name"]
    assert generator["files"][0].split("=")[0] == "config.yaml"
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1


def test_job_image_secret_and_namespace_agree_with_the_example_config():
    cfg = load_config(KUBE / "config.yaml").cluster
    pod = resource("Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secret = resource("Secret")
    assert container["image"] == cfg.kubernetes.image
    assert container["envFrom"] == [{"secretRef": {"name": cfg.kubernetes.secret}}]
    assert secret["metadata"]["name"] == cfg.kubernetes.secret
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
    assert resource("Kustomization")["namespace"] == cfg.kubernetes.namespace == secret["metadata"]["namespace"]
    assert load_config(KUBE / "config.yaml").store.url.startswith("s3://")


def test_driver_runs_non_root_with_resource_limits():
    pod = resource("Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    uid = KubernetesConfig().run_as_user
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_driver_service_account_may_run_a_kubecluster():
    pod = resource("Job")["spec"]["template"]["spec"]
    account, role, binding = resource("ServiceAccount"), resource("Role"), resource("RoleBinding")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    # create / delete the cluster, scale its worker group, create the autoscaler of adapt:,
    # watch the scheduler pod and service come up.
    needed = {("daskclusters", "create"), ("daskclusters", "delete"), ("daskclusters", "get"),
              ("daskworkergroups", "patch"), ("daskautoscalers", "create"), ("daskautoscalers", "patch"),
              ("daskautoscalers", "delete"), ("pods", "list"), ("pods", "watch"), ("services", "get")}
    assert needed <= granted


# ------------------------------------------------------------------ TLS and the network policy


EXAMPLES = ("config.yaml", "config-gpu.yaml", "config-pools.yaml")


def test_network_policies_close_each_example_cluster_to_all_but_its_pods_and_the_driver():
    policies = documents(KUBE / "networkpolicy.yaml")
    configs = [load_config(KUBE / name).cluster for name in EXAMPLES]
    assert policies == [kube_network_policy(cfg) for cfg in configs]
    assert "networkpolicy.yaml" in resource("Kustomization")["resources"]
    driver = resource("Job")["spec"]["template"]["metadata"]["labels"]
    for policy, cfg in zip(policies, configs, strict=True):
        own = {"matchLabels": {"dask.org/cluster-name": cfg.kubernetes.name}}
        spec = policy["spec"]
        # Every port of the cluster's pods (scheduler, workers, dashboards)...
        assert spec["podSelector"] == own and spec["policyTypes"] == ["Ingress"]
        peers, operator = spec["ingress"]
        # ...from its own pods and the driver Job's pod, any port...
        assert "ports" not in peers and peers["from"][0] == {"podSelector": own}
        (driver_selector,) = [p["podSelector"]["matchLabels"] for p in peers["from"][1:]]
        assert driver_selector.items() <= driver.items() and driver_selector["app.kubernetes.io/component"] == "driver"
        # ...and the operator, which scales the cluster through the scheduler's HTTP port alone.
        assert operator["ports"] == [{"protocol": "TCP", "port": 8787}]
        assert operator["from"][0]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "dask-kubernetes-operator"}


def test_driver_mounts_the_tls_secret_the_cluster_pods_mount():
    pod = resource("Job")["spec"]["template"]["spec"]
    cfg = load_config(KUBE / "config.yaml").cluster
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": cfg.tls.secret, "defaultMode": 0o440}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/etc/dask-tls", "readOnly": True}
    spec = kube_cluster_spec(cfg)
    for part in ("scheduler", "worker"):
        assert spec["spec"][part]["spec"]["volumes"] == [{"name": "dask-tls", "secret": volume["secret"]}]


def test_tls_secret_is_printed_ready_to_apply(capsys):
    import base64
    import ssl

    assert main(["megaset-dask-tls", "megaset"]) == 0
    secret = yaml.safe_load(capsys.readouterr().out)
    assert kubernetes_validate.validate(secret, K8S_VERSION, strict=True) == "1.37"
    assert secret["metadata"] == {"name": "megaset-dask-tls", "namespace": "megaset",
                                  "labels": {"app.kubernetes.io/name": "megaset"}}
    assert set(secret["data"]) == set(SECRET_KEYS)
    ca, cert, key = (base64.b64decode(secret["data"][k]).decode() for k in SECRET_KEYS)
    assert cert.startswith("-----BEGIN CERTIFICATE-----") and key.startswith("-----BEGIN PRIVATE KEY-----")
    ssl.PEM_cert_to_DER_cert(ca)  # a certificate, as PEM
    # A new certificate each time: no two clusters share one.
    assert secret_manifest("x")["data"]["tls.key"] != secret["data"]["tls.key"]
    assert main([]) == 2


# ------------------------------------------------------------------ container image


def test_dockerfile_installs_torch_first_then_every_layer_as_non_root():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    package = lines.index("RUN pip install --constraint requirements/lock.txt '.[s3,xrootd]'")
    assert torch < package
    # What the image copies is what the build context lets in (Dockerfile.dockerignore).
    context = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for copied in re.findall(r"^COPY (\S+) ", text, flags=re.MULTILINE):
        assert f"!{copied.rstrip('/')}/**" in context or f"!{copied}" in context, copied
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in text
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    folders = set(re.findall(r'^"megaset(?:\.\w+)?" = "(\w+)"$', pyproject, flags=re.MULTILINE))
    assert {"megaset", "pipeline", "storage", "training", "deploy", "report"} <= folders
    copied = set(re.findall(r"^COPY (\w+)/ ", text, flags=re.MULTILINE))
    assert "requirements" in copied
    assert folders <= copied, f"not copied into the image: {folders - copied}"
    (user,) = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert user.split(":")[0] == str(KubernetesConfig().run_as_user) != "0"
    assert lines.index(f"USER {user}") > package


def test_dockerfile_fills_numba_cache_at_build_for_a_portable_cpu():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    warm = lines.index("RUN python -m megaset.warmup")
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install ") and "'.[" in line)
    assert install < warm < next(i for i, line in enumerate(lines) if line.startswith("USER "))
    env = text[text.index("ENV NUMBA_CACHE_DIR"):text.index("RUN python -m megaset.warmup")]
    assert "NUMBA_CACHE_DIR=/opt/megaset/numba-cache" in env
    assert "NUMBA_CPU_NAME=${NUMBA_CPU_NAME}" in env and 'NUMBA_CPU_FEATURES=""' in env
    assert "ARG NUMBA_CPU_NAME=x86-64-v2" in lines


# ------------------------------------------------------------------ HTCondor


def test_jobqueue_yaml_uses_only_keys_dask_jobqueue_knows():
    defaults = yaml.safe_load((resources.files("dask_jobqueue") / "jobqueue.yaml").read_text())
    ours = yaml.safe_load((CONDOR / "jobqueue.yaml").read_text())
    assert set(ours) == {"jobqueue"} and set(ours["jobqueue"]) == {"htcondor"}
    unknown = set(ours["jobqueue"]["htcondor"]) - set(defaults["jobqueue"]["htcondor"])
    assert not unknown


def test_jobqueue_yaml_fills_what_the_megaset_config_leaves_out():
    import dask

    site = yaml.safe_load((CONDOR / "jobqueue.yaml").read_text())["jobqueue"]["htcondor"]
    cfg = ClusterConfig(kind="htcondor", threads_per_worker=3, memory_per_worker="6 GiB")
    # As dask merges ~/.config/dask/jobqueue.yaml into its defaults, key by key.
    with dask.config.set({f"jobqueue.htcondor.{key}": value for key, value in site.items()}):
        script = htcondor_job_script(cfg)
        overridden = htcondor_job_script(cfg.model_copy(update={"htcondor": cfg.htcondor.model_copy(
            update={"disk": "1 GiB", "job_extra_directives": {"+MegasetWorker": '"yes"', "priority": 5}})}))
    assert "MY.DaskWorkerDisk = 10737418240\n" in script  # 10 GiB from jobqueue.yaml
    assert "MY.DaskWorkerCores = 3\n" in script  # the megaset config, not jobqueue.yaml's 1
    assert "MY.DaskWorkerMemory = 6442450944\n" in script
    assert "+MegasetWorker = True\n" in script
    assert "--death-timeout 120" in script and "--local-directory $_CONDOR_SCRATCH_DIR" in script
    assert "MY.DaskWorkerDisk = 1073741824\n" in overridden
    assert '+MegasetWorker = "yes"\n' in overridden and "priority = 5\n" in overridden


def submit_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip().lower()] = value.strip()
    return out


def test_pool_worker_jobs_are_the_example_config_rendered():
    """One job description per pool under one scheduler: CPU jobs declare CPU, GPU jobs request and declare GPUs."""
    import dask

    site = yaml.safe_load((CONDOR / "jobqueue.yaml").read_text())["jobqueue"]["htcondor"]
    cfg = load_config(CONDOR / "config-pools.yaml").cluster
    with dask.config.set({f"jobqueue.htcondor.{key}": value for key, value in site.items()}):
        rendered = htcondor_job_script(cfg)
    committed = (CONDOR / "workers-pools.sub").read_text()
    assert committed.endswith(rendered)
    assert "DASK_CONFIG=deploy/htcondor python -m megaset.deploy.render deploy/htcondor/config-pools.yaml" in committed
    cpu, gpu = rendered.split("# pool gpu: 2 jobs\n")
    assert cpu.startswith("# pool cpu: 20 jobs\n")
    assert "--resources CPU=2 " in cpu and "request_GPUs" not in cpu and "MY.DaskWorkerCores = 2\n" in cpu
    assert "--resources GPU=1 " in gpu and "request_GPUs = 1\n" in gpu and "MY.DaskWorkerCores = 4\n" in gpu
    for job in (cpu, gpu):  # both pools' workers reach the one scheduler over TLS
        assert "--tls-key $_CONDOR_SCRATCH_DIR/tls.key --protocol tls://'" in job
    assert cpu.count("\nQueue\n") == gpu.count("\nQueue\n") == 1


def test_driver_submit_file_runs_megaset_on_the_submit_node():
    sub = submit_file(CONDOR / "driver.sub")
    assert sub["universe"] == "local"
    assert sub["executable"] == "$ENV(VIRTUAL_ENV)/bin/megaset"
    assert sub["transfer_executable"] == "false"
    default = re.fullmatch(r"run --config \$\(config:([\w.-]+)\)", sub["arguments"])
    assert default and (CONDOR / default.group(1)).is_file()
    # An explicit environment: getenv = true would copy the submitting shell's secrets into the job ad.
    assert "getenv" not in sub
    assert sub["environment"] == '"PATH=$ENV(PATH) VIRTUAL_ENV=$ENV(VIRTUAL_ENV) HOME=$ENV(HOME)"'
    assert re.search(r"^queue\s*$", (CONDOR / "driver.sub").read_text(), flags=re.MULTILINE)


@pytest.mark.parametrize("name", ["config-shared-fs.yaml", "config-object-store.yaml", "config-pools.yaml"])
def test_htcondor_example_configs_load(name):
    cfg = load_config(CONDOR / name)
    assert cfg.cluster.kind == "htcondor"
    assert cfg.store.url.startswith("s3://") == (name != "config-shared-fs.yaml")
