"""Writes the report of one or more runs (`runs.RunInput`): tables, figures, HTML, Markdown.

Output, in one folder:

    report.html          one self-contained page (figures embedded)
    report.md            the same content; figures by file name
    summary.json         "steps" (the first method's per-step means), "aggregate" (every
                         method and step, mean ± std over seeds), "runs" (each run's
                         table), and the per-class, increment, forgetting, published,
                         training and provenance figures
    miou_steps.png       old / new / all mIoU and hIoU per step, methods overlaid
    per_class_iou.png    class x step IoU of the first method (per_class_iou_<k>.png: k-th)
    forgetting.png       per-class forgetting, methods side by side
    training_loss.png    loss terms and learning rate per iteration
    throughput.png       images/s per step
    samples.png          qualitative results of the first method (samples_<k>.png: k-th)

Runs of one method are seeds: their figures are mean ± sample std; per-class
figures and loss curves use the mean over seeds and the first seed's log.
What a step lacks (a train log, a provenance record, samples) is a note in the
report, never an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dkd_core.errors import DKDError
from dkd_core.provenance import git_revision, numerics_key, numerics_summary, utc_now
from dkd_core.report import figures, tables
from dkd_core.report.document import Code, Figure, Section, Table, Text, to_html, to_markdown
from dkd_core.report.inputs import RunFacts, gather
from dkd_core.report.published import published_for
from dkd_core.report.runs import FIGURES, RunInput, aggregate, methods, step_table
from dkd_core.report.samples import qualitative_figure


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    steps_plot: Path
    classes_plot: Path
    summary: Path
    #: Every PNG written (the two above included).
    figures: list[Path] = field(default_factory=list)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_stats(stats: dict) -> str:
    """`mean` for one seed, `mean ± std` for several."""
    if stats["std"] is None:
        return _fmt(stats["mean"])
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _mean_rows(rows: list[dict]) -> list[dict]:
    """Aggregated rows as plain step rows of their means."""
    return [{"step": r["step"], **{k: r[k]["mean"] for k in FIGURES}} for r in rows]


def _numbered(out_dir: Path, stem: str, k: int) -> Path:
    return out_dir / (f"{stem}.png" if k == 0 else f"{stem}_{k + 1}.png")


class _Report:
    """Builds the sections; one instance per `build_report` call."""

    def __init__(self, runs: Sequence[RunInput], out_dir: Path, title: str):
        self.runs, self.out_dir, self.title = list(runs), out_dir, title
        self.rows = aggregate(runs)
        self.groups = tables.grouped(runs)
        self.several = len(self.groups) > 1
        self.facts: dict[int, RunFacts] = {id(r): gather(r) for r in runs}
        self.notes = [n for r in runs for n in self.facts[id(r)].notes]
        self.figures: list[Path] = []
        self.summary: dict = {}
        task = next((f.task for f in self.facts.values() if f.task), None)
        self.task = task
        self.published = (
            published_for(task["dataset"], task["name"], task["setting"]) if task else ()
        )

    def rows_of(self, method: str) -> list[dict]:
        return [r for r in self.rows if r["method"] == method]

    def figure(self, path: Path | None) -> Path | None:
        if path is not None:
            self.figures.append(path)
        return path

    # -- sections ------------------------------------------------------------------------

    def results(self) -> Section:
        s = Section("Results per step", anchor="results")
        columns = (["method"] if self.several else []) + ["step", "old", "new", "all", "hIoU"]
        body = [
            ([r["method"]] if self.several else []) + [str(r["step"])]
            + [_fmt_stats(r[k]) for k in FIGURES]
            for r in self.rows
        ]  # fmt: skip
        s.add(Text(
            "mIoU (%) on the test set after each step. old = background and the base classes "
            "(step 0's), new = every class added after step 0, all = every class seen so far, "
            "hIoU = harmonic mean of old and new." + self.seed_note()
        ))  # fmt: skip
        s.add(Table(columns, body, left=(0,) if self.several else ()))
        path = self.figure(
            figures.steps_figure(
                {m: self.rows_of(m) for m in self.groups}, self.published,
                self.out_dir / "miou_steps.png",
            )
        )  # fmt: skip
        seeds = any(len(g) > 1 for g in self.groups.values())
        s.add(Figure(path, "mIoU after each step"
                     + ("; error bars: sample std over seeds" if seeds else "")
                     + ("; markers at the last step: the authors' published figures"
                        if self.published else "")))  # fmt: skip
        return s

    def seed_note(self) -> str:
        parts = []
        for method, group in self.groups.items():
            seeds = [r.seed for r in group]
            if len(group) > 1:
                parts.append(
                    f" {method}: {len(group)} seeds ({', '.join(map(str, seeds))}), "
                    "mean ± sample std."
                )
        return "".join(parts)

    def published_section(self) -> Section | None:
        if not self.task:
            return None
        name = f"{self.task['dataset']} {self.task['name']} ({self.task['setting']})"
        s = Section("Published results", anchor="published")
        if not self.published:
            s.add(Text(f"No published numbers for {name}: the authors report VOC and ADE20K "
                       "benchmarks only (overlapped setting)."))  # fmt: skip
            return s
        ours = {m: self.rows_of(m)[-1] for m in self.groups}
        rows = tables.published_rows(ours, self.published)
        self.summary["published"] = rows
        s.add(Text(
            f"{name}, after the last step: ours beside the numbers the authors published "
            "(labelled by source; '–' where the source gives no figure)."
        ))  # fmt: skip

        def cell(row, key):
            if row["std"] and row["std"].get(key) is not None:
                return f"{row[key]:.2f} ± {row['std'][key]:.2f}"
            return _fmt(row[key])

        body = [
            [("ours" if r["source"] == "ours" else r["source"]), r["method"]]
            + [cell(r, k) for k in FIGURES]
            for r in rows
        ]  # fmt: skip
        s.add(Table(["source", "method", "old", "new", "all", "hIoU"], body, left=(0, 1)))
        return s

    def increments_section(self) -> Section:
        s = Section("New classes by increment", anchor="increments")
        last = max(len(r.steps) for r in self.runs) - 1
        header = (["method"] if self.several else []) + ["after step"] + [
            "step 0 (bg + base)" if i == 0 else f"step {i}" for i in range(last + 1)
        ]  # fmt: skip
        body, summary = [], {}
        for method, group in self.groups.items():
            rows = tables.method_increments(group)
            summary[method] = rows
            for row in rows:
                cells = [_fmt_stats(row["by_increment"][i]) if i in row["by_increment"] else ""
                         for i in range(last + 1)]  # fmt: skip
                body.append(([method] if self.several else []) + [str(row["step"])] + cells)
        self.summary["increments"] = {
            m: [{"step": r["step"], "by_increment": {str(k): v for k, v in r["by_increment"].items()}}
                for r in rows] for m, rows in summary.items()
        }  # fmt: skip
        s.add(Text(
            "mIoU (%) of the classes each step added, after each step: a column falling "
            "down the table is that increment being forgotten; the diagonal is how well "
            "each increment was learned."
        ))  # fmt: skip
        s.add(Table(header, body, left=(0,) if self.several else ()))
        return s

    def classes_section(self) -> tuple[Section, Path]:
        s = Section("Per-class IoU across steps", anchor="classes")
        heatmaps = {}
        first_path = None
        for k, (method, group) in enumerate(self.groups.items()):
            steps = group[0].steps
            names = steps[-1]["channel_names"]
            matrix = tables.mean_matrix(group)
            added = tables.learned_at(steps)
            heatmaps[method] = {"classes": names, "added_at": added, "iou": [
                [None if v != v else v for v in row] for row in matrix]}  # fmt: skip
            label = f"{method}" + (f", mean of {len(group)} seeds" if len(group) > 1 else "")
            path = self.figure(figures.heatmap_figure(
                names, matrix, added, _numbered(self.out_dir, "per_class_iou", k),
                f"IoU (%) per class after each step: {label}",
            ))  # fmt: skip
            first_path = first_path or path
            s.add(Figure(path, f"{label}: classes as rows (lines separate the increments), "
                         "steps as columns; hatched = not learned yet"))  # fmt: skip
        self.summary["per_class"] = heatmaps
        first = next(iter(heatmaps.values()))
        if len(first["classes"]) <= figures.ANNOTATE_UP_TO:
            for method, h in heatmaps.items():
                steps = len(h["iou"][0])
                header = ["class", "added at"] + [f"step {t}" for t in range(steps)]
                body = [
                    [name, str(added)] + [_fmt(v) if v is not None else "" for v in row]
                    for name, added, row in zip(h["classes"], h["added_at"], h["iou"], strict=True)
                ]  # fmt: skip
                s.add(Table(header, body, caption=f"{method}: IoU (%) per class" if self.several
                            else "IoU (%) per class", left=(0,)))  # fmt: skip
        else:
            s.add(Text(f"{len(first['classes'])} classes: the per-class values are in "
                       "summary.json (per_class)."))  # fmt: skip
        return s, first_path

    def forgetting_section(self) -> Section | None:
        if all(len(r.steps) < 2 for r in self.runs):
            return None
        s = Section("Forgetting per class", anchor="forgetting")
        rows = {m: tables.method_forgetting(g) for m, g in self.groups.items()}
        self.summary["forgetting"] = rows
        if not any(rows.values()):
            return None
        path = self.figure(figures.forgetting_figure(rows, self.out_dir / "forgetting.png"))
        s.add(Text(
            "Forgetting of a class = its IoU after the step that added it minus its IoU after "
            "the last step (IoU points; > 0: forgotten). Classes of the last step are left out."
        ))  # fmt: skip
        s.add(Figure(path, "per-class forgetting" + (", methods side by side"
                                                     if self.several else "")))  # fmt: skip
        names, aligned = tables.align_by_class(rows)
        methods_ = list(aligned)
        header = ["class", "added at"] + [
            f"{m}: learned → last" if self.several else "learned → last" for m in methods_
        ] + [f"{m}: forgetting" if self.several else "forgetting" for m in methods_]  # fmt: skip

        def stat(r):
            if r is None:
                return ""
            v, std = r["forgetting"], r["forgetting_std"]
            return _fmt(v) if std is None else f"{v:.2f} ± {std:.2f}"

        def learned(r):
            return "" if r is None else f"{_fmt(r['iou_learned'])} → {_fmt(r['iou_last'])}"

        body = []
        for i, name in enumerate(names):
            present = [aligned[m][i] for m in methods_ if aligned[m][i] is not None]
            added = sorted({str(r["learned_at"]) for r in present})
            body.append([name, "/".join(added)] + [learned(aligned[m][i]) for m in methods_]
                        + [stat(aligned[m][i]) for m in methods_])  # fmt: skip
        means = [
            sum(r["forgetting"] for r in rows[m]) / len(rows[m]) if rows[m] else None
            for m in methods_
        ]
        body.append(["mean", ""] + [""] * len(methods_) + [_fmt(v) for v in means])
        s.add(Table(header, body, caption="Forgetting per class (IoU points)", left=(0,)))
        return s

    def training_section(self) -> Section:
        s = Section("Training", anchor="training")
        logs = {m: self.facts[id(g[0])].steps for m, g in self.groups.items()}
        logs = {m: [st.train_log for st in steps] for m, steps in logs.items()}
        if any(log for ls in logs.values() for log in ls):
            path = self.figure(figures.loss_figure(logs, self.out_dir / "training_loss.png"))
            s.add(Figure(path, "each loss term and their weighted sum (total, with the loss.* "
                         "weights; log scale) and the learning rate per logged iteration, "
                         "from each step's train_log.jsonl"
                         + (" (first seed of each method)"
                            if any(len(g) > 1 for g in self.groups.values()) else "")))  # fmt: skip
        else:
            s.add(Text("No train logs found: no loss curves."))
        throughput = {
            m: [(st.provenance or {}).get("images_per_second") for st in self.facts[id(g[0])].steps]
            for m, g in self.groups.items()
        }  # fmt: skip
        if any(v for vs in throughput.values() for v in vs):
            path = self.figure(
                figures.throughput_figure(throughput, self.out_dir / "throughput.png")
            )
            s.add(Figure(path, "images/s of each step's training attempt (provenance.json)"))
        header = (["method"] if self.several else []) + [
            "step", "iterations", "lr first → last", "final loss (total)", "wall time",
            "images/s", "finished (UTC)",
        ]  # fmt: skip
        body, summary = [], {}
        for method, group in self.groups.items():
            rows = [tables.training_row(st.train_log, st.provenance)
                    for st in self.facts[id(group[0])].steps]  # fmt: skip
            summary[method] = rows
            for t, row in enumerate(rows):
                total = row["final_loss"].get("total")
                wall = row["wall_seconds"]
                body.append(([method] if self.several else []) + [
                    str(t), str(row["iterations"] or "–"),
                    f"{row['lr_first']:.2e} → {row['lr_last']:.2e}" if row["lr_first"] else "–",
                    _fmt(total, 4), "–" if wall is None else f"{wall:.0f} s",
                    _fmt(row["images_per_second"], 1), row["finished"] or "–",
                ])  # fmt: skip
        self.summary["training"] = summary
        s.add(Table(header, body, left=(0,) if self.several else ()))
        return s

    def samples_section(self) -> Section:
        s = Section("Qualitative results", anchor="samples")
        shown = False
        for k, (_method, group) in enumerate(self.groups.items()):
            steps = self.facts[id(group[0])].steps
            path = self.figure(qualitative_figure(
                steps, _numbered(self.out_dir, "samples", k),
                f"{group[0].label}: ground truth and the prediction after each step",
            ))  # fmt: skip
            if path is None and any(st.checkpoint for st in steps):
                missing = [st.step for st in steps if st.samples is None]
                self.notes.append(
                    f"{group[0].label}: no qualitative results (no eval/samples/index.json "
                    f"for steps {missing}; `python -m dkd_core report --run DIR` computes them)"
                )
            if path is None:
                continue
            shown = True
            s.add(Figure(path, f"{group[0].label}: the same test images at every step (chosen "
                         "to cover the most classes), in the dataset's palette; ground truth "
                         "of the last step; predictions by the evaluation's rule"))  # fmt: skip
        if not shown:
            s.add(Text("No sample predictions found (see the notes)."))
        return s

    def provenance_section(self) -> Section:
        s = Section("Provenance", anchor="provenance")
        s.add(Text(f"Report written {utc_now()} by revision {git_revision() or 'unknown'}."))
        checkpoints, trained, summary = [], [], []
        for run in self.runs:
            for st in self.facts[id(run)].steps:
                meta = st.meta or {}
                p = st.provenance or {}
                sha = (meta.get("weights") or {}).get("sha256")
                summary.append({
                    "run": run.label, "step": st.step, "seed": run.seed,
                    "checkpoint": st.checkpoint, "model_sha256": sha,
                    "git_revision": p.get("git_revision"), "started": p.get("started"),
                    "finished": p.get("finished"), "wall_seconds": p.get("wall_seconds"),
                    "hardware": p.get("hardware"),
                })  # fmt: skip
                checkpoints.append([run.label, str(st.step), st.checkpoint or "–", sha or "–"])
                wall = p.get("wall_seconds")
                trained.append([
                    run.label, str(st.step), str(run.seed if run.seed is not None else "–"),
                    p.get("finished") or "–", "–" if wall is None else f"{wall:.0f} s",
                    p.get("git_revision") or "–", tables.hardware_summary(p.get("hardware")),
                ])  # fmt: skip
        self.summary["provenance"] = summary
        self._note_mixed_numerics([row["hardware"] for row in summary])
        s.add(Table(["run", "step", "checkpoint", "model.safetensors sha256"], checkpoints,
                    caption="Checkpoints (sha256 as recorded in meta.json)",
                    left=(0, 2, 3)))  # fmt: skip
        s.add(Table(["run", "step", "seed", "finished (UTC)", "wall time", "git revision",
                     "hardware"], trained, caption="Training (provenance.json)",
                    left=(0, 3, 5, 6)))  # fmt: skip
        for _method, group in self.groups.items():
            steps = self.facts[id(group[0])].steps
            configs = [(st.meta or {}).get("config") for st in steps]
            if configs and configs[0]:
                s.add(Code(yaml.safe_dump(configs[0], sort_keys=False),
                           f"{group[0].label}: resolved config of step 0 (meta.json)"))  # fmt: skip
                changes = tables.config_changes(configs)
                text = "; ".join(
                    f"step {c['step']}: " + (", ".join(f"{k} {a} → {b}" for k, (a, b) in
                                                       c["changed"].items()) or "none")
                    for c in changes
                )  # fmt: skip
                if changes and not any(c["changed"] for c in changes):
                    text = "identical in every step"
                if text:
                    s.add(Text(f"{group[0].label}, config of later steps against step 0: {text}"))
        return s

    def _note_mixed_numerics(self, records: list[dict | None]) -> None:
        """A note when the steps were trained on different hardware or CPU numerics: then
        two runs may differ by float rounding alone (docs/reproducibility.md)."""
        kinds: dict[tuple, str] = {}
        for hardware in records:
            key = numerics_key(hardware)
            if key is not None:
                gpus = ", ".join(sorted(set(hardware.get("gpus") or [])))
                kinds.setdefault(key, (f"{gpus}; " if gpus else "")
                                 + numerics_summary(hardware.get("numerics")))  # fmt: skip
        self.summary["numerics_differ"] = len(kinds) > 1
        if len(kinds) > 1:
            self.notes.append(
                f"the steps compared here were trained on {len(kinds)} different kinds of "
                "hardware or CPU numerics (CPU model, kernel ISA, threads, libraries): their "
                "numbers may differ by float rounding alone, not only by method or seed. "
                + " | ".join(kinds.values())
            )

    def notes_section(self) -> Section | None:
        if not self.notes:
            return None
        s = Section("Notes", anchor="notes")
        s.add(Table(["note"], [[n] for n in self.notes], left=(0,)))
        return s


def build_report(runs: Sequence[RunInput], out_dir: Path, title: str = "DKD run") -> ReportFiles:
    """Write the report of `runs` (each with its steps' metrics, step 0 first) to `out_dir`."""
    if not runs or not any(r.steps for r in runs):
        raise DKDError("no step metrics given: nothing to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _Report(runs, out_dir, title)
    sections = [report.results()]
    sections += [x for x in (report.published_section(),) if x]
    sections.append(report.increments_section())
    classes, classes_plot = report.classes_section()
    sections.append(classes)
    sections += [x for x in (report.forgetting_section(),) if x]
    sections += [report.training_section(), report.samples_section(), report.provenance_section()]
    sections += [x for x in (report.notes_section(),) if x]
    first = methods(runs)[0]
    labels = ", ".join(f"{m} ({len(g)} run{'s' if len(g) > 1 else ''})"
                       for m, g in report.groups.items())  # fmt: skip
    task = report.task
    intro = (
        f"Task {task['dataset']} {task['name']} ({task['setting']}). " if task else ""
    ) + f"{labels}. Values in percent."
    files = ReportFiles(
        out_dir / "report.md", out_dir / "report.html", out_dir / "miou_steps.png",
        classes_plot, out_dir / "summary.json", report.figures,
    )  # fmt: skip
    _write(files.markdown, to_markdown(title, intro, sections))
    _write(files.html, to_html(title, intro, sections))
    summary = {
        "title": title,
        # The first method's per-step means (a single run: its own values).
        "steps": _mean_rows(report.rows_of(first)),
        "aggregate": report.rows,
        "runs": [
            {"method": r.method, "seed": r.seed, "steps": step_table(r.steps, r.label)}
            for r in runs
        ],
        "task": task,
        **report.summary,
        "notes": report.notes,
    }
    _write(files.summary, json.dumps(summary, indent=2) + "\n")
    return files


def _write(path: Path, text: str) -> None:
    """Atomically: a reader sees the old file or the new one."""
    from dkd_core.storage.store import atomic_output

    with atomic_output(path, fsync=False) as f:
        f.write(text.encode("utf-8"))
