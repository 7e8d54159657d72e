"""Kubeflow pipelines of the DKD benchmarks: configs under `configs/`, the DAG builder, the CLI.

`python -m pipelines compile|submit|run|demo|render-job` (see `pipelines.__main__`);
`build_pipeline(config_path, ...)` returns the `@dsl.pipeline` function of one
benchmark, `compile_pipeline(name, output, ...)` writes its IR YAML;
`pipelines.jobspec` maps a train step's parameters to its training job.

The builder (and with it kfp) is imported on first use of these names, so the
train step component can import `pipelines.jobspec` alone.
"""

from typing import Any

_BUILDER_NAMES = (
    "CONFIGS",
    "available_configs",
    "build_pipeline",
    "compile_pipeline",
    "config_path",
    "pipeline_name",
)

__all__ = list(_BUILDER_NAMES)


def __getattr__(name: str) -> Any:
    if name in _BUILDER_NAMES:
        from pipelines import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
