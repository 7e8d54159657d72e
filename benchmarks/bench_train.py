"""Training images/s and peak memory of one optimiser step: step 0 vs an incremental step.

Step 0: forward, mbce + ac, backward, SGD step. Incremental step (VOC 15-1
step 1): the student with decomposition, the frozen teacher's forward, the full
DKD loss, backward, SGD step, BN frozen. DeepLabV3-ResNet-101 at batch 2,
256 and 512 px; CPU, or CUDA (bf16 autocast, optionally channels_last) when present.
Each configuration runs in a fresh process so that peak memory is its own.

    python benchmarks/bench_train.py [--sizes 256 512] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import json
import statistics
import time

import common
import torch

from dkd_core.losses import LossWeights, dkd_losses
from dkd_core.model import DeepLabV3
from dkd_core.tasks import get_task


def measure(step_index: int, size: int, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    step = get_task("voc", "15-1").step(step_index)
    model = DeepLabV3(step.classes_per_step[:1], backbone=args.backbone).to(device)
    teacher = None
    if step_index > 0:
        teacher = model.as_teacher()
        model.add_step(step.num_new)
        model.freeze_bn()
    model.train()
    channels_last = args.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        teacher = teacher and teacher.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameter_groups(1e-3, 1e-4), momentum=0.9, nesterov=True)
    images = torch.randn(args.batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (args.batch, size, size), device=device) * step.new_channels[0]
    use_bf16 = device.type == "cuda"

    def train_iteration():
        with torch.autocast(device.type, torch.bfloat16, enabled=use_bf16):
            out = model(images, decompose=teacher is not None)
            teacher_out = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = teacher(images, decompose=True)
            loss = dkd_losses(out, teacher_out, labels, step, LossWeights())["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_iteration()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        train_iteration()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = common.peak_memory_mib(device)
    return {"seconds": seconds, "images_per_s": args.batch / seconds, "peak_memory_mib": peak}


def main() -> None:
    args = common.parser(__doc__, ("STEP", "SIZE")).parse_args()
    if args.one:  # child process: one configuration, JSON on stdout
        print(json.dumps(measure(int(args.one[0]), int(args.one[1]), args)))
        return

    rows = [
        {"step": step_index, "size": size, **common.run_child(__file__, args, (step_index, size))}
        for size in args.sizes
        for step_index in (0, 1)
    ]
    amp = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
    print(
        f"DeepLabV3-{args.backbone} training, batch {args.batch}, {args.device} ({amp}), "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'size':>5} {'step':<18} {'s/iter':>8} {'img/s':>7} {'peak MiB':>9}")
    for r in rows:
        kind = "0 (base)" if r["step"] == 0 else "1 (DKD + teacher)"
        print(
            f"{r['size']:>5} {kind:<18} {r['seconds']:>8.3f} {r['images_per_s']:>7.2f} "
            f"{r['peak_memory_mib']:>9.0f}"
        )
    common.write_json(args.json, {"device": args.device, "rows": rows})


if __name__ == "__main__":
    main()
