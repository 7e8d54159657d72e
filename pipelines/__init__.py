"""Kubeflow pipelines of the DKD benchmarks: configs under `configs/`, the DAG builder, the CLI.

`python -m pipelines compile|submit|run|demo` (see `pipelines.__main__`);
`build_pipeline(config_path, ...)` returns the `@dsl.pipeline` function of one
benchmark, `compile_pipeline(name, output, ...)` writes its IR YAML.
"""

from pipelines.builder import (
    CONFIGS,
    available_configs,
    build_pipeline,
    compile_pipeline,
    config_path,
    pipeline_name,
)

__all__ = [
    "CONFIGS",
    "available_configs",
    "build_pipeline",
    "compile_pipeline",
    "config_path",
    "pipeline_name",
]
