"""Forward and forward+backward time and peak memory of DeepLabV3, ours vs a straightforward one.

The baseline shares our backbone and ASPP modules but computes the heads the
straightforward way (the way the reference code does): one conv per step for
the logits, and for the decomposed terms one matmul per step over permuted
features with masked weights. Both run the incremental-step workload: the
student forward with decomposition plus the DKD loss, and its backward.

Each (implementation, size) runs in a fresh process so that peak memory (RSS on
CPU, allocator peak on CUDA) belongs to that configuration alone.

    python benchmarks/bench_model.py [--sizes 256 512] [--batch 2] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import json
import statistics
import time

import common
import torch
import torch.nn.functional as F
from common import peak_memory_mib

from dkd_core.losses import LossWeights, dkd_losses
from dkd_core.model import DeepLabV3, SegmentationOutput
from dkd_core.tasks import get_task


class StraightforwardDeepLabV3(DeepLabV3):
    """Same layers, heads computed one step at a time (reference style)."""

    def forward(self, images: torch.Tensor, decompose: bool = False) -> SegmentationOutput:
        features = self.aspp(self.backbone(images))
        heads = [F.conv2d(features.detach(), self.aux_head.weight, self.aux_head.bias)]
        heads += [head(features) for head in self.step_heads]
        logits = F.interpolate(
            torch.cat(heads, 1), size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        if not decompose:
            return SegmentationOutput(logits)
        f = features.permute(0, 2, 3, 1)  # [N, h, w, D]
        pos, neg = [], []
        for head in self.step_heads:
            w = head.weight.flatten(1)  # [C_s, D]
            pos.append((f @ torch.where(w > 0, w, torch.zeros_like(w)).T).permute(0, 3, 1, 2))
            neg.append((f @ torch.where(w < 0, w, torch.zeros_like(w)).T).permute(0, 3, 1, 2))
        return SegmentationOutput(logits, torch.cat(pos, 1), torch.cat(neg, 1))


IMPLEMENTATIONS = {"ours": DeepLabV3, "straightforward": StraightforwardDeepLabV3}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_one(impl: str, size: int, args) -> dict:
    """Time one configuration in this process; returns seconds and peak memory."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    step = get_task("voc", "15-1").step(1)  # an incremental step: 15 old classes + 1 new
    model = IMPLEMENTATIONS[impl](step.classes_per_step, backbone=args.backbone).to(device)
    teacher = DeepLabV3(step.classes_per_step[:-1], backbone=args.backbone).to(device).eval()
    model.freeze_bn()
    model.train()
    channels_last = args.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last)
    images = torch.randn(args.batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (args.batch, size, size), device=device) * 16
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.bf16 and device.type == "cuda")

    def forward():
        with torch.no_grad(), autocast:
            return model(images, decompose=True)

    def forward_backward():
        with autocast:
            out = model(images, decompose=True)
            with torch.no_grad():
                teacher_out = teacher(images, decompose=True)
            loss = dkd_losses(out, teacher_out, labels, step, LossWeights())["total"]
        loss.backward()
        model.zero_grad(set_to_none=True)

    results = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        fn()  # warm-up
        sync(device)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        results[name + "_s"] = statistics.median(times)
    results["peak_memory_mib"] = peak_memory_mib(device)
    return results


def main() -> None:
    parser = common.parser(__doc__, ("IMPL", "SIZE"))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    args = parser.parse_args()
    if args.one:  # child process: one configuration, JSON on stdout
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args)))
        return

    rows = [
        {"impl": impl, "size": size, **common.run_child(__file__, args, (impl, size))}
        for size in args.sizes
        for impl in IMPLEMENTATIONS
    ]
    mode = " ".join(
        f for f, on in (("bf16", args.bf16), ("channels_last", args.channels_last)) if on
    )
    print(
        f"DeepLabV3-{args.backbone}, batch {args.batch}, device {args.device} {mode}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}; "
        "incremental step (student with decomposition + teacher + DKD loss)"
    )
    print(f"{'size':>5} {'impl':<16} {'forward s':>10} {'fwd+bwd s':>10} {'peak MiB':>9}")
    for r in rows:
        print(
            f"{r['size']:>5} {r['impl']:<16} {r['forward_s']:>10.3f} "
            f"{r['forward_backward_s']:>10.3f} {r['peak_memory_mib']:>9.0f}"
        )
    for size in args.sizes:
        ours, base = (
            next(r for r in rows if r["size"] == size and r["impl"] == i) for i in IMPLEMENTATIONS
        )
        print(
            f"{size}px: ours/straightforward time forward {ours['forward_s'] / base['forward_s']:.2f}x, "
            f"fwd+bwd {ours['forward_backward_s'] / base['forward_backward_s']:.2f}x"
        )
    common.write_json(args.json, {"device": args.device, "mode": mode, "rows": rows})


if __name__ == "__main__":
    main()
