"""DKD: Decomposed Knowledge Distillation for class-incremental semantic segmentation.

The package is the method itself (tasks, model, losses, evaluation) plus what it
takes to run it (data, training, storage, metrics, CLI). See docs/method.md for the
method and docs/architecture.md for how the parts meet.
"""

__version__ = "0.1.0"
