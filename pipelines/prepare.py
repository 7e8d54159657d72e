"""Pipelines `prepare-voc` and `prepare-ade`: `data fetch` in a pod, straight into the object store.

    make submit PIPELINE=prepare-voc IMAGE=registry/dkd:tag DATA=s3://mlpipeline/shared/VOC2012

One task (`components.dkd.prepare_dataset`) downloads the official archives (or a
`mirror`'s, a run parameter), verifies them, lays out what training reads and pushes it
to `dataset_uri`, so the archives never cross a laptop or a port-forward. The archives
and the extracted copy live in an emptyDir (`$DKD_CACHE`) that goes with the pod.
Caching is off: a run after the prefix was emptied must fetch again, and a run on a
complete prefix uploads nothing anyway (`data push` skips what is there).
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
from collections.abc import Callable, Mapping

from kfp import dsl

from components import LOCAL_IMAGE, with_image
from dkd_core.errors import DKDError
from dkd_core.locations import CACHE_ENV
from pipelines.jobspec import DEFAULT_S3_ENDPOINT, DEFAULT_S3_KEYS, DEFAULT_S3_SECRET

PREPARE_PIPELINES = {"prepare-voc": "voc", "prepare-ade": "ade"}
CACHE_MOUNT = "/var/cache/dkd"
#: A cap on the pod's scratch space, not a measured need: raise it if the pod is evicted.
CACHE_SIZE_LIMIT = "16Gi"


def build_prepare_pipeline(
    name: str,
    image: str | None = None,
    s3_secret: str = DEFAULT_S3_SECRET,
    s3_endpoint: str = DEFAULT_S3_ENDPOINT,
    s3_secret_keys: Mapping[str, str] | None = None,
    cluster: bool = True,
) -> Callable:
    """The pipeline function of `prepare-voc` or `prepare-ade` (see the module doc)."""
    from pipelines.builder import NO_IMAGE

    if name not in PREPARE_PIPELINES:
        raise DKDError(f"unknown pipeline {name!r}: expected one of {', '.join(PREPARE_PIPELINES)}")
    if not image:
        if cluster:
            raise DKDError(NO_IMAGE)
        image = LOCAL_IMAGE
    dataset = PREPARE_PIPELINES[name]
    keys = dict(DEFAULT_S3_KEYS if s3_secret_keys is None else s3_secret_keys)
    c = with_image(image)
    default_endpoint = s3_endpoint

    @dsl.pipeline(
        name=f"dkd-{name}",
        description=f"Fetch the official {dataset.upper()} archives, verify them and push "
        "what training reads to dataset_uri",
    )
    def pipeline(dataset_uri: str, mirror: str = "", s3_endpoint: str = default_endpoint) -> None:
        task = c.prepare_dataset(
            dataset=dataset, dataset_uri=dataset_uri, mirror=mirror, s3_endpoint=s3_endpoint
        )
        task.set_caching_options(False)
        if cluster:
            from kfp import kubernetes

            task.set_display_name(f"fetch {dataset}")
            if s3_secret:
                kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=keys)
            kubernetes.empty_dir_mount(
                task, volume_name="dkd-cache", mount_path=CACHE_MOUNT, size_limit=CACHE_SIZE_LIMIT
            )
            task.set_env_variable(CACHE_ENV, CACHE_MOUNT)

    return pipeline
