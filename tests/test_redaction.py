from __future__ import annotations

import json

from faults import CLUSTER_WITH_SECRETS, SECRET

from megaset.config import Config
from megaset.redaction import REDACTED, redact

WITH_SECRETS = {
    "cluster": CLUSTER_WITH_SECRETS,
    "inputs": {"channels": {"a": {"files": [f"s3://me:{SECRET}@minio:9000/b/*.root",
                                            f"https://host/a.root?X-Amz-Signature={SECRET}&part=1"]}}},
}


def test_persisted_config_keeps_no_credential_and_the_rest_as_it_was():
    cfg = Config.model_validate(WITH_SECRETS)
    kept = cfg.persisted()
    assert SECRET not in json.dumps(kept)
    assert SECRET in json.dumps(cfg.resolved())  # the run itself still has them
    cluster = kept["cluster"]
    assert cluster["kubernetes"]["env"] == {"AWS_SECRET_ACCESS_KEY": REDACTED, "AWS_ENDPOINT_URL": REDACTED}
    assert cluster["kubernetes"]["secret"] == "megaset-s3"  # the Secret's name, no credential
    assert cluster["tls"]["secret"] == cfg.cluster.tls.secret  # the certificates' Secret, by name
    assert cluster["htcondor"]["job_script_prologue"] == [
        f"export AWS_SECRET_ACCESS_KEY={REDACTED}", "export HOME=/scratch",
        "export AWS_SHARED_CREDENTIALS_FILE=/scratch/credentials"]
    assert cluster["htcondor"]["job_extra_directives"]["environment"] == f'"API_TOKEN={REDACTED} LANG=C"'
    assert kept["inputs"]["channels"]["a"]["files"] == [
        f"s3://{REDACTED}@minio:9000/b/*.root", f"https://host/a.root?X-Amz-Signature={REDACTED}&part=1"]
    # Everything else is as resolved, and a redacted copy still loads as a configuration.
    assert {k: v for k, v in kept.items() if k not in ("cluster", "inputs")} == \
        {k: v for k, v in cfg.resolved().items() if k not in ("cluster", "inputs")}
    Config.model_validate(kept)


def test_redact_leaves_plain_values():
    plain = {"a": [1, 2.5, None, True], "url": "s3://bucket/key.zarr", "path": "data/x.root", "key": "jetPt"}
    assert redact(plain) == plain
