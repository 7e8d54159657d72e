"""Submit a compiled pipeline to Kubeflow Pipelines: upload (or add a version), create a run.

Where KFP is: `--host` or `$KFP_HOST` (e.g. http://localhost:8080 after
`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`); a bearer token,
when the endpoint needs one, from `--token` or `$KFP_TOKEN`. A host that cannot
be reached, or that turns the request away, is a one-line `DKDError` saying
what to set.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dkd_core.errors import DKDError

HOST_ENV = "KFP_HOST"
TOKEN_ENV = "KFP_TOKEN"
HEALTHZ = "/apis/v2beta1/healthz"
PORT_FORWARD = "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80"


@dataclass(frozen=True)
class Submitted:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str
    url: str


def resolve_host(host: str | None) -> str:
    """`host` or $KFP_HOST, with http:// added when no scheme is given, without a trailing /."""
    host = (host or os.environ.get(HOST_ENV, "")).strip()
    if not host:
        raise DKDError(
            f"no Kubeflow Pipelines host: pass --host URL or set {HOST_ENV} "
            f"(e.g. {HOST_ENV}=http://localhost:8080 after `{PORT_FORWARD}`)"
        )
    if "://" not in host:
        host = "http://" + host
    return host.rstrip("/")


def check_host(host: str, token: str | None = None, timeout: float = 10.0) -> None:
    """Ask KFP's health endpoint once; raise a `DKDError` saying what to fix if that fails.

    (kfp.Client retries an unauthorised answer five times, 5 s apart, and then
    reports a timeout; this tells the cases apart at once.)
    """
    request = urllib.request.Request(host + HEALTHZ, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(65536)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise DKDError(
                f"Kubeflow Pipelines at {host} refused the request (HTTP {e.code}): "
                f"set {TOKEN_ENV} (or --token) to a valid token for it"
            ) from None
        raise DKDError(
            f"{host}{HEALTHZ} answered HTTP {e.code} {e.reason}: is {host} the Kubeflow "
            f"Pipelines API? Set --host or {HOST_ENV} to it"
        ) from None
    except OSError as e:  # URLError, refused, timeout, DNS
        reason = getattr(e, "reason", e)
        raise DKDError(
            f"cannot reach Kubeflow Pipelines at {host} ({reason}): set --host or {HOST_ENV} "
            f"to a reachable address (e.g. http://localhost:8080 after `{PORT_FORWARD}`)"
        ) from None
    try:
        json.loads(body)
    except ValueError:  # e.g. a login page after a redirect
        raise DKDError(
            f"{host}{HEALTHZ} did not answer with JSON (a login page?): set {TOKEN_ENV} "
            f"(or --token) to a token, or --host/{HOST_ENV} to the API's address"
        ) from None


def _describe(exc: BaseException) -> str:
    """One line: the API's status, reason and message (`launch.cluster.api_error_message`)."""
    from dkd_core.launch.cluster import api_error_message

    return " ".join(api_error_message(exc).split())


def _client_errors() -> tuple[type[BaseException], ...]:
    """What kfp.Client raises for a server's answer or a network failure."""
    import kfp_server_api
    import urllib3

    return (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


#: Bucket of KFP's object store; in multi-user Kubeflow a profile's keys (its
#: `mlpipeline-minio-artifact`) may read and write only these prefixes of it (the
#: pipelines profile controller's policy, manifests/.../pipelines-profile-controller/sync.py).
KFP_BUCKET = "mlpipeline"


def profile_prefixes(namespace: str) -> tuple[str, ...]:
    """Key prefixes of KFP's bucket that the keys of profile `namespace` may read."""
    return (f"private/{namespace}/", "shared/")


def check_dataset_uri(
    uri: str,
    env: Mapping[str, str] | None = None,
    namespace: str | None = None,
    profile_secrets: tuple[str, ...] = (),
    must_hold_objects: bool = True,
) -> None:
    """Refuse, before anything is submitted, a dataset the pods could not read.

    - `uri` must be s3:// (or minio://): pods in a cluster cannot read this machine's files.
    - With a (profile) `namespace` and pods reading the store with the profile's own keys
      (`profile_secrets`: the Secrets among the component's and the jobs' that are KFP's
      `mlpipeline-minio-artifact`), it must lie in `s3://mlpipeline/private/<namespace>/`
      or `s3://mlpipeline/shared/`.
    - When this machine can reach the store (S3_ENDPOINT/MINIO_ENDPOINT set), it must
      hold objects (unless not `must_hold_objects`: a prefix a prepare pipeline fills).
    """
    from dkd_core.storage import is_remote, open_store, split_s3_uri

    env = os.environ if env is None else env
    if not is_remote(uri):
        raise DKDError(
            f"dataset_uri {uri!r} is not an s3:// URI: pods in the cluster cannot read files "
            "of this machine; upload the dataset and pass DATA=s3://bucket/prefix "
            "(--data, or --param dataset_uri=...)"
        )
    if namespace and profile_secrets:
        bucket, key = split_s3_uri(uri)
        key = key.rstrip("/") + "/"
        allowed = profile_prefixes(namespace)
        if bucket != KFP_BUCKET or not key.startswith(allowed):
            where = " or ".join(f"s3://{KFP_BUCKET}/{p}..." for p in allowed)
            raise DKDError(
                f"dataset_uri {uri}: the keys of profile {namespace} (Secret "
                f"{profile_secrets[0]}) may read only {where}; upload the dataset there, or "
                "give the pods keys that can read it (--s3-secret, --job-s3-secret)"
            )
    if not must_hold_objects or not (env.get("S3_ENDPOINT") or env.get("MINIO_ENDPOINT")):
        return  # the store is not reachable from here; the split step will say if it is wrong
    if not open_store(uri).list(uri, recursive=False):
        raise DKDError(f"dataset_uri {uri} holds no objects: upload the dataset there first")


def find_pipeline(client: Any, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called `name` in `namespace` (None: shared), if there is one.

    (`kfp.Client.get_pipeline_id` takes no namespace: in multi-user Kubeflow it looks
    among the shared pipelines only, so a pipeline uploaded to a namespace is not found
    and the second upload fails.)
    """
    flt = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
    )
    found = client.list_pipelines(filter=flt, namespace=namespace, page_size=2).pipelines or []
    if len(found) > 1:
        where = f"namespace {namespace}" if namespace else "the shared pipelines"
        raise DKDError(f"{len(found)} pipelines are named {name} in {where}: rename or delete one")
    return found[0].pipeline_id if found else None


def submit(
    package: str | Path,
    pipeline_name: str,
    description: str,
    params: Mapping[str, Any],
    host: str | None = None,
    namespace: str | None = None,
    experiment: str | None = None,
    token: str | None = None,
    client: Any = None,
) -> Submitted:
    """Upload `package` as `pipeline_name` (a new version if it exists), start a run, return it."""
    host = resolve_host(host)
    token = token or os.environ.get(TOKEN_ENV) or None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    try:
        if client is None:
            import kfp

            check_host(host, token)
            with (
                warnings.catch_warnings()
            ):  # "This client only works with KFP v2.0.0-beta.2 and later"
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(  # kfp's own default namespace when none is given
                    host=host, namespace=namespace or "kubeflow", existing_token=token
                )
        pipeline_id = find_pipeline(client, pipeline_name, namespace)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(
                str(package), pipeline_name=pipeline_name, description=description,
                namespace=namespace,
            ).pipeline_id  # fmt: skip
            versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc")
            version_id = versions.pipeline_versions[0].pipeline_version_id
        else:
            version_id = client.upload_pipeline_version(
                str(package), pipeline_version_name=f"{pipeline_name}-{stamp}",
                pipeline_id=pipeline_id, description=description,
            ).pipeline_version_id  # fmt: skip
        exp = client.create_experiment(experiment or pipeline_name, namespace=namespace)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id, job_name=f"{pipeline_name}-{stamp}",
            params=dict(params), pipeline_id=pipeline_id, version_id=version_id,
        )  # fmt: skip
    except DKDError:
        raise
    except _client_errors() as e:
        status = getattr(e, "status", None)
        hint = f" (set {TOKEN_ENV} or --token)" if status in (401, 403) else ""
        raise DKDError(f"Kubeflow Pipelines at {host}: {_describe(e)}{hint}") from None
    return Submitted(
        pipeline_id,
        version_id,
        exp.experiment_id,
        run.run_id,
        f"{host}/#/runs/details/{run.run_id}",
    )
