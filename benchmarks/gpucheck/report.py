"""What the driver derives from the stages' figures (MFU, speed-ups, input-bound) and the table."""

from __future__ import annotations


def _rows(stages: dict) -> list[dict]:
    return [r for r in stages.get("throughput", {}).get("rows", []) if "images_per_second" in r]


def summary(stages: dict) -> dict:
    """Figures that need two stages, and the overall verdict."""
    tflops = stages.get("env", {}).get("matmul_bf16_tflops")
    mfu = {}
    for r in _rows(stages):
        if tflops:
            key = f"{r['config']} b{r['batch']} s{r['step']}"
            mfu[key] = r["images_per_second"] * r["flops_per_image"] / (tflops * 1e12)
    speedup = {}
    for r in _rows(stages):
        if r["config"] != "reference_fp16_amp":
            continue
        ours = [
            o for o in _rows(stages)
            if o["config"].startswith("ours") and (o["batch"], o["step"]) == (r["batch"], r["step"])
        ]  # fmt: skip
        if ours:
            best = max(ours, key=lambda o: o["images_per_second"])
            speedup[f"b{r['batch']} s{r['step']}"] = {
                "best_ours": best["config"],
                "ratio": best["images_per_second"] / r["images_per_second"],
            }
    consumed = max((r["images_per_second"] for r in _rows(stages) if r["config"].startswith("ours")), default=None)  # fmt: skip
    pipeline = {}
    for rate in stages.get("pipeline", {}).get("rates", []):
        if "images_per_second" in rate and consumed:
            pipeline[str(rate["workers"])] = {
                "loader_images_per_second": rate["images_per_second"],
                "fastest_training_images_per_second": consumed,
                "input_bound": rate["images_per_second"] < consumed,
            }
    failed_checks = [
        f"{name}: {c['name']}"
        for name, s in stages.items()
        for c in s.get("checks", [])
        if not c["passed"]
    ]
    bad_stages = [f"{name}: {s['status']}" for name, s in stages.items() if s["status"] != "ok"]
    return {
        "mfu": mfu,
        "speedup_over_reference": speedup,
        "pipeline_vs_training": pipeline,
        "failed_checks": failed_checks,
        "stages_not_ok": bad_stages,
        "passed": not failed_checks and not bad_stages,
    }


def _fmt(value, spec: str = ".3g", empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def table(payload: dict) -> str:
    stages, s = payload["stages"], payload["summary"]
    env = stages.get("env", {}).get("environment", {})
    lines = [
        "",
        f"GPU check on {env.get('gpu', env.get('device', '?'))}: torch {env.get('torch', '?')}, "
        f"CUDA {env.get('cuda', '-')}, driver {env.get('driver', '-')}, "
        f"bf16 matmul {_fmt(stages.get('env', {}).get('matmul_bf16_tflops'), '.1f')} TFLOP/s",
        "",
        f"{'stage':<12} {'status':<10} {'seconds':>8}  note",
    ]
    for name, stage in stages.items():
        failed = [c["name"] for c in stage.get("checks", []) if not c["passed"]]
        note = stage.get("error") or (f"failed: {', '.join(failed)}" if failed else "")
        lines.append(f"{name:<12} {stage['status']:<10} {stage['seconds']:>8.1f}  {note}")

    modes = stages.get("correctness", {}).get("modes", [])
    if modes:
        names = ["logits", "pos", "neg", "loss.mbce", "loss.kd", "loss.dkd_pos", "loss.dkd_neg",
                 "loss.ac", "loss.total", "gradient"]  # fmt: skip
        lines += ["", "relative error vs fp32 CPU: " + " ".join(f"{n.removeprefix('loss.'):>8}" for n in names)]  # fmt: skip
        for m in modes:
            errors = m["relative_error"]
            lines.append(
                f"  {m['mode']:<25} " + " ".join(f"{_fmt(errors.get(n), '8.1e'):>8}" for n in names)
                + ("" if m["finite"] else "  NON-FINITE")
            )  # fmt: skip

    ciss = stages.get("ciss", {})
    if "step1" in ciss:
        st = ciss["step1"]
        lines += ["", f"CISS step 1: total loss {st['first_third_mean']:.4f} -> {st['last_third_mean']:.4f} "
                  f"({'falling' if st['falling'] else 'NOT falling'}), resumed from iteration "
                  f"{st['resumed_from_iteration']}, mIoU {_fmt(st.get('miou_all'), '.1f')}"]  # fmt: skip

    rows = stages.get("throughput", {}).get("rows", [])
    if rows:
        lines += ["", f"{'configuration':<22} {'batch':>5} {'step':>4} {'images/s':>9} {'peak GiB':>9} {'MFU':>6}  note"]  # fmt: skip
        for r in rows:
            key = f"{r['config']} b{r['batch']} s{r['step']}"
            note = r.get("skipped") or r.get("error") or ""
            if "weights" in r and not note:
                note = f"weights: {r['weights']}"
                if "fp32_loss_vs_ours" in r:
                    note = f"fp32 loss {_fmt(r['fp32_loss_vs_ours'], '.1e')} from ours; {note}"
            lines.append(
                f"{r['config']:<22} {r['batch']:>5} {r['step']:>4} "
                f"{_fmt(r.get('images_per_second'), '9.1f'):>9} {_fmt(r.get('peak_memory_gib'), '9.1f'):>9} "
                f"{_fmt(s['mfu'].get(key), '6.1%'):>6}  {note}"
            )  # fmt: skip
        flops = stages["throughput"].get("flops_per_image", {})
        lines.append("FLOPs per image (forward + teacher + backward): "
                     + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in flops.items()))  # fmt: skip
        for key, sp in s["speedup_over_reference"].items():
            lines.append(f"  {key}: {sp['best_ours']} is {sp['ratio']:.2f}x the authors' model")
        note = stages["throughput"].get("reference_note")
        if note:
            lines.append(f"  authors' model: {note}")

    for workers, p in s["pipeline_vs_training"].items():
        lines.append(
            f"input pipeline, {workers:>2} workers: {p['loader_images_per_second']:.1f} images/s vs "
            f"{p['fastest_training_images_per_second']:.1f} consumed by training: "
            f"{'INPUT-BOUND' if p['input_bound'] else 'not input-bound'}"
        )
    lines += ["", "PASSED" if s["passed"] else "FAILED: " + "; ".join(s["stages_not_ok"] + s["failed_checks"])]  # fmt: skip
    return "\n".join(lines)
