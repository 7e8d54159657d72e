"""What the GPU check runs: one `Settings` for the GPU and one tiny one for CPU.

These two presets are the single source of truth for the check's sizes,
iteration counts and time budgets; `gpu_check.py` only lets a few of them be
overridden (device, stages, budgets). The GPU preset is sized so that the whole
check (every stage's budget added up) stays under 8 minutes on one GPU; the
tiny preset runs the same code on CPU in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("env", "correctness", "ciss", "throughput", "pipeline")


@dataclass(frozen=True)
class Settings:
    device: str = "cuda"
    backbone: str = "resnet101"
    output_stride: int = 16
    aspp_channels: int = 256
    size: int = 512  # crop side of every stage, px
    data_size: int = 384  # side of the generated images (VOC's are about 500 x 375)
    # correctness: one batch through the student and the teacher (VOC 15-1 step 1)
    correctness_batch: int = 2
    correctness_size: int = 256  # the CPU reference (and CPU autocast) must fit the budget
    # ciss: a real step 0 then step 1 (killed after its first periodic checkpoint, resumed)
    ciss_images: int = 48  # generated toy images (VOC layout); 20% are the test split
    ciss_batch: int = 8
    ciss_workers: int = 8
    ciss_torchrun: bool = True  # launch training as a pod does; the tiny preset saves its start-up
    step0_iterations: int = 50
    step1_iterations: int = 300
    checkpoint_every: int = 100
    # throughput: DeepLabV3 training iterations per configuration
    batches: tuple[int, ...] = (16, 8)  # per GPU; the first is measured first
    steps: tuple[int, ...] = (1, 0)  # CISS steps measured, in this order
    warmup_iterations: int = 3
    timed_iterations: int = 10
    compile_backend: str = "inductor"
    compile_min_seconds: float = 75.0  # a torch.compile row starts only with this much budget left
    matmul_size: int = 8192  # square bf16 matrix product that sets the MFU denominator
    # pipeline: the train loader alone
    pipeline_workers: tuple[int, ...] = (8, 16)
    pipeline_seconds: float = 10.0  # timed per worker count, after the first batch
    # hard wall-clock limit of each stage, seconds (the stage runs in its own process)
    budgets: dict[str, float] = field(
        default_factory=lambda: {
            "env": 20,
            "correctness": 60,
            "ciss": 130,
            "throughput": 205,
            "pipeline": 35,
        }
    )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_file(cls, path: str | Path) -> Settings:
        data = json.loads(Path(path).read_text())
        for key in ("batches", "steps", "pipeline_workers"):
            data[key] = tuple(data[key])
        return cls(**data)


GPU = Settings()

# The same stages on CPU in seconds: a tiny ResNet, 64 px, a handful of iterations.
# torch.compile uses the aot_eager backend here: it traces the model through
# dynamo and AOT autograd like inductor does, without compiling C++ kernels.
TINY = Settings(
    device="cpu",
    backbone="tiny",
    output_stride=8,
    aspp_channels=32,
    size=64,
    data_size=64,
    correctness_batch=2,
    correctness_size=64,
    ciss_images=30,
    ciss_batch=4,
    ciss_workers=2,
    ciss_torchrun=False,
    step0_iterations=6,
    step1_iterations=24,
    checkpoint_every=8,
    batches=(2,),
    steps=(1,),
    warmup_iterations=1,
    timed_iterations=2,
    compile_backend="aot_eager",
    compile_min_seconds=5.0,
    matmul_size=256,
    pipeline_workers=(0, 2),
    pipeline_seconds=1.0,
    budgets={"env": 60, "correctness": 60, "ciss": 180, "throughput": 180, "pipeline": 60},
)
