"""Training images/s and peak memory of one optimiser step: step 0 vs an incremental step.

Step 0: forward, mbce + ac, backward, SGD step. Incremental step (VOC 15-1
step 1): the student with decomposition, the frozen teacher's forward, the full
DKD loss, backward, SGD step, BN frozen. DeepLabV3-ResNet-101 at batch 2,
256 and 512 px; CPU, or CUDA (bf16 autocast, optionally channels_last) when present.
Each configuration runs in a fresh process so that peak memory is its own.

    python benchmarks/bench_train.py [--sizes 256 512] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

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
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "images_per_s": args.batch / seconds, "peak_memory_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action="store_true", help="NHWC (CUDA only)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--one", nargs=2, type=int, metavar=("STEP", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args)))
        return

    passthrough = [a for a in sys.argv[1:] if a not in ("--json", args.json)]
    rows = []
    for size in args.sizes:
        for step_index in (0, 1):
            cmd = [sys.executable, __file__, *passthrough, "--one", str(step_index), str(size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append({"step": step_index, "size": size, **json.loads(out.splitlines()[-1])})
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
