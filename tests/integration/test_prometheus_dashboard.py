"""Every query of the Grafana dashboard against a real Prometheus and Pushgateway.

The toy trains two steps of one run (step 1 as two processes under torchrun),
then step 0 again as a second run with the same run name, another seed and no
Pushgateway (a pipeline run again). Prometheus scrapes each training process
every second with the labels the PodMonitor gives a PyTorchJob master pod, and
the Pushgateway with honor_labels, as its documentation asks. While each step
runs and after it ends, every panel query of k8s/monitoring/dashboard.json
(Grafana's template variables substituted) must parse, return data where the
hardware allows (rank 0's CUDA memory: parse only, there is no GPU), and equal what
the training wrote: loss vs train_log.jsonl, learning rate vs the schedule,
iteration vs progress and epoch, checkpoint sizes vs the files, mIoU vs
eval/metrics.json, one row per running step and per finished step, no series of
a step that is not running in the live panels. The DCGM panels read a stand-in
dcgm-exporter scraped both ways (with and without honorLabels).

Each step waits at three iterations (dkd_core/hold_for_tests.py) until the
checks have seen that iteration scraped: what is checked live does not depend
on how fast the machine trains.

Needs Debian's `prometheus` and `prometheus-pushgateway` (.ci/run installs them).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from dkd_core.config import Config, load_config
from dkd_core.hold_for_tests import HOLD_FILE_ENV
from dkd_core.locations import StepLocations
from dkd_core.metrics import FINAL_METRIC_NAMES, TrainingMetrics
from dkd_core.model.deeplab import HEAD_LR_MULTIPLIER
from dkd_core.train import lr_factor
from tests.integration.conftest import CONFIGS

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]
DASHBOARD = REPO / "k8s" / "monitoring" / "dashboard.json"
PROMETHEUS = shutil.which("prometheus")
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
NEEDS_BINARIES = pytest.mark.skipif(
    not (PROMETHEUS and PUSHGATEWAY),
    reason="needs the prometheus and prometheus-pushgateway binaries on PATH "
    "(Debian: apt-get install prometheus prometheus-pushgateway; .ci/run installs them)",
)

NAMESPACE = "team-a"
RUN_NAME = "toy-prom"
RERUN_ID = "kfp-run-2"  # the second run's pipeline run id; the first run generates its own
# Grafana's $__rate_interval for a 1 s scrape interval is 4 s; 5 s leaves room for a late scrape.
VARIABLES = {"__rate_interval": "5s", "__range": "1h", "namespace": NAMESPACE, "gpu_pods": "dkd-.*"}
ALL = ".*"  # Grafana's allValue for run, run_id, task, ciss_step: "All" selected
GPU_PANELS = ("GPU memory (rank 0)", "GPU utilisation (DCGM)", "GPU framebuffer used (DCGM)")
TRAINING = (
    "data.num_workers=0", "data.batch_size=4", "data.eval_batch_size=16", "data.crop_size=32",
    "model.aspp_channels=16", "train.log_every=5", "train.checkpoint_every=40",
    "train.keep_checkpoints=100", "train.progress=false", "train.metrics_address=127.0.0.1",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_ready(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} not ready at {url}")


class Monitoring:
    """Prometheus and a Pushgateway on 127.0.0.1, each with its own data folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.targets_file = root / "targets.json"
        self.write_targets([])
        self.pushgateway_port, self.prometheus_port = free_port(), free_port()
        self.pushgateway_url = f"http://127.0.0.1:{self.pushgateway_port}"
        self.url = f"http://127.0.0.1:{self.prometheus_port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "pushgateway",
                    "honor_labels": True,  # keep the pushed job and grouping labels
                    "static_configs": [{"targets": [f"127.0.0.1:{self.pushgateway_port}"]}],
                },
                {
                    "job_name": "dkd-training",
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
                },
                *(  # dcgm-exporter scraped as a ServiceMonitor does, without and with honorLabels
                    {
                        "job_name": f"dcgm-honor-{honor}".lower(),
                        "honor_labels": honor,
                        "file_sd_configs": [{"files": [str(root / f"dcgm-{honor}.json")],
                                             "refresh_interval": "1s"}],
                    }
                    for honor in (False, True)
                ),
            ],
        }  # fmt: skip
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.logs = [open(root / name, "wb") for name in ("pushgateway.log", "prometheus.log")]  # noqa: SIM115 - open while the servers run
        self.pushgateway = subprocess.Popen(
            [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{self.pushgateway_port}",
             f"--persistence.file={root / 'pushgateway.data'}"],
            stdout=self.logs[0], stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}"],
            stdout=self.logs[1], stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_ready(f"{self.pushgateway_url}/-/ready", self.pushgateway, "pushgateway")
        wait_ready(f"{self.url}/-/ready", self.prometheus, "prometheus")
        self.started = time.time()

    def write_targets(self, targets: list[dict], file: Path | None = None) -> None:
        """Replace the file_sd targets atomically (as pods come and go)."""
        file = file or self.targets_file
        partial = file.with_suffix(".tmp")
        partial.write_text(json.dumps(targets))
        partial.replace(file)

    def scrape_pod(self, port: int, job_name: str) -> None:
        """Scrape 127.0.0.1:port with the labels the PodMonitor gives a PyTorchJob master pod."""
        labels = {
            "namespace": NAMESPACE, "pod": f"{job_name}-master-0", "container": "pytorch",
            "endpoint": "metrics", "job": f"{NAMESPACE}/dkd-training",
            "training_kubeflow_org_job_name": job_name,
        }  # fmt: skip
        self.write_targets([{"targets": [f"127.0.0.1:{port}"], "labels": labels}])

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series; a parse error fails the test."""
        params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        try:
            body = http_get(f"{self.url}/api/v1/query?{params}")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{expr}: {e.read().decode()}") from None
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", expr
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def query_last(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """A range query over the test's lifetime: each series' last value, as a time
        series panel's legend shows it (lastNotNull)."""
        start = min(self.started, at - 1)
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{at:.3f}", "step": "1"}
        body = http_get(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}")
        assert body["status"] == "success" and body["data"]["resultType"] == "matrix", body
        out = []
        for series in body["data"]["result"]:
            values = [float(v) for _, v in series["values"] if not math.isnan(float(v))]
            if values:
                out.append((series["metric"], values[-1]))
        return out

    def label_values(self, selector: str, label: str) -> set[str]:
        """What Grafana's label_values(selector, label) lists."""
        params = urllib.parse.urlencode({"match[]": selector})
        body = http_get(f"{self.url}/api/v1/label/{label}/values?{params}")
        assert body["status"] == "success", body
        return set(body["data"])

    def close(self) -> None:
        for proc in (self.prometheus, self.pushgateway):
            proc.terminate()
        for proc in (self.prometheus, self.pushgateway):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory) -> Iterator[Monitoring]:
    if not (PROMETHEUS and PUSHGATEWAY):
        pytest.skip("needs the prometheus and prometheus-pushgateway binaries")
    m = Monitoring(tmp_path_factory.mktemp("monitoring"))
    try:
        yield m
    finally:
        m.close()


# -- the dashboard ------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str  # with Grafana's variables substituted
    range: bool  # a time series (Grafana runs a range query), else one instant


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable syntax, $name and ${name}; `$1` (label_replace) is not a variable."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", value, expr)


def dashboard_queries() -> tuple[list[Query], list[tuple[str, str, str]]]:
    """Panel queries, and variable queries as (name, selector, label)."""
    board = json.loads(DASHBOARD.read_text())
    values = {**VARIABLES, "run": ALL, "run_id": ALL, "task": ALL, "ciss_step": ALL}
    queries = [
        Query(panel["title"], target["refId"], substitute(target["expr"], values), target["range"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    variables = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            variables.append((variable["name"], substitute(match.group(1), values), match.group(2)))
    return queries, variables


# -- what the training wrote --------------------------------------------------------------


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


@dataclass
class Step:
    """One training process and what it wrote."""

    label: str  # for the report: "first run" or "re-run"
    data_root: Path
    output: Path
    index: int
    run_id: str | None  # $DKD_RUN_ID; None: generated, learnt from the live series
    seed: int = 1
    processes: int = 1  # under torchrun when > 1
    push: bool = True  # PUSHGATEWAY_URL set; else the results reach Prometheus by the last scrape
    # About 100 iterations: the step is held at the ones the test must see (see `holds`),
    # so how many scrapes fall within its training does not depend on the machine's speed.
    # Step 1 trains on the new class's images only (a third of step 0's batches per epoch),
    # so it gets three times the epochs.
    epochs: int = 6
    config: Config = field(init=False)
    where: StepLocations = field(init=False)
    periodic_bytes: dict[int, int] = field(default_factory=dict)
    planned: int | None = None  # as the live series said
    scraped: bool = False  # its live series were seen
    sampled: bool = False  # a positive samples-per-second rate was seen

    def __post_init__(self) -> None:
        self.config = load_config(CONFIGS / "toy.yaml", self.overrides())
        self.where = StepLocations.of_run(str(self.output), self.index)

    def overrides(self, port: int = -1) -> list[str]:
        return [
            f"data.root={self.data_root}", f"run.output={self.output}", f"run.name={RUN_NAME}",
            *TRAINING, f"optim.epochs={self.epochs}", f"train.seed={self.seed}",
            f"train.metrics_port={port}",
        ]  # fmt: skip

    @property
    def key(self) -> tuple[str, str]:
        assert self.run_id is not None
        return self.run_id, str(self.index)

    def train_log(self) -> dict[int, dict]:
        lines = Path(self.where.train_log).read_text().splitlines()
        return {r["iteration"]: r for r in map(json.loads, lines)}

    def last_logged_iteration(self) -> int:
        return max(self.train_log())

    def test_results(self) -> dict[str, Any]:
        return json.loads(Path(self.where.metrics).read_text())

    def checkpoint_bytes(self) -> int:
        return folder_bytes(Path(self.where.checkpoint))

    def note_periodic_checkpoints(self) -> None:
        for meta in Path(self.where.periodic).glob("iter_*/meta.json"):
            iteration = int(meta.parent.name.removeprefix("iter_"))
            self.periodic_bytes.setdefault(iteration, folder_bytes(meta.parent))

    def learning_rate(self, group: str, iteration: int, planned: int) -> float:
        """The poly schedule after `iteration` steps, as torch's LambdaLR computes it."""
        lr = self.config.optim.lr if self.index == 0 else self.config.optim.lr_incremental
        base = lr if group == "backbone" else lr * HEAD_LR_MULTIPLIER
        return base * lr_factor(self.config, iteration, planned)


# -- the checks ---------------------------------------------------------------------------


def is_final(q: Query) -> bool:
    """A results panel: it reads the final figures (pushed, or the step's last scrape)."""
    return any(name in q.expr for name in FINAL_METRIC_NAMES)


class Checker:
    """Runs every dashboard query at one instant and compares it with what the training wrote."""

    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring
        self.queries, self.variables = dashboard_queries()
        self.finished: list[Step] = []
        self.had_data: set[tuple[str, str]] = set()
        # For the closing table: (phase, panel, ref) -> [(seen, expected)] of one round per
        # phase, the first past half the planned iterations (or the first after the step).
        self.report: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
        self.round: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
        self.reported: set[str] = set()

    def seen(self, phase: str, q: Query, seen: str, expected: str) -> None:
        self.round.setdefault((phase, q.panel, q.ref), []).append((seen, expected))

    def run_all(self, live: Step | None, phase: str) -> int | None:
        """All queries at one instant; returns the live iteration seen (None before any)."""
        at = time.time() - 0.5  # a scrape being written is seen entirely or not at all
        # Live panels at the instant (what is running now); a results time series as its
        # last points over the time range (a finished step's line ends where it ended).
        results = {
            (q.panel, q.ref): self.monitoring.query_last(q.expr, at)
            if q.range and is_final(q)
            else self.monitoring.query(q.expr, at)
            for q in self.queries
        }
        for q in self.queries:
            if any(not math.isnan(v) for _, v in results[(q.panel, q.ref)]):
                self.had_data.add((q.panel, q.ref))
        if live is not None:
            live.note_periodic_checkpoints()
        self.round = {}
        iteration = self.check_live(results, live, phase)
        running = bool(results[("Running steps", "A")])
        self.check_finished(results, live, running, phase)
        self.check_variables(live)
        halfway = live is None or (iteration is not None and 2 * iteration >= (live.planned or 0))
        if phase not in self.reported and halfway:
            self.report.update(self.round)
            self.reported.add(phase)
        return iteration

    def by_query(self, results, panel: str) -> list[tuple[Query, list]]:
        found = [(q, results[(q.panel, q.ref)]) for q in self.queries if q.panel == panel]
        assert found, f"no panel {panel!r} on the dashboard"
        return found

    def check_live(self, results, live: Step | None, phase: str) -> int | None:
        live_panels = [q for q in self.queries if not is_final(q)]
        for q in live_panels:
            for labels, _ in results[(q.panel, q.ref)]:
                if q.panel in GPU_PANELS[1:]:
                    raise AssertionError(f"{q.panel}: DCGM data without a GPU: {labels}")
                assert live is not None, f"{q.panel}: a series while no step runs: {labels}"
                if live.run_id is None:  # generated by the trainer: learn it once
                    live.run_id = labels["run_id"]
                live.scraped = True
                assert (labels["run_id"], labels["ciss_step"]) == live.key, (q.panel, labels)
                assert labels["namespace"] == NAMESPACE and labels["run"] == RUN_NAME, labels
        if live is None:
            return None
        value = {}
        for q in live_panels:
            rows = results[(q.panel, q.ref)]
            value[(q.panel, q.ref)] = rows
        iteration_rows = value[("Iteration and epoch", "A")]
        if not iteration_rows:
            return None
        [(_, n)] = iteration_rows
        n = int(n)
        [(_, planned)] = value[("Iteration and epoch", "B")]
        planned = live.planned = int(planned)
        per_epoch = planned // live.config.optim.epochs
        checks: dict[tuple[str, str], Any] = {
            ("Iteration and epoch", "C"): (n - 1) // per_epoch,
            ("Progress of each step", "A"): n / planned,
        }
        for (panel, ref), expected in checks.items():
            [(_, seen)] = value[(panel, ref)]
            assert seen == expected, (panel, ref, seen, expected, n)
            self.seen(phase, self.query_of(panel, ref), f"{seen:.6g}", f"{expected:.6g}")
        self.seen(phase, self.query_of("Iteration and epoch", "A"), str(n), "≤ planned")
        self.seen(
            phase, self.query_of("Iteration and epoch", "B"), str(planned), "epochs × batches"
        )
        assert 0 < n <= planned
        assert planned % live.config.optim.epochs == 0

        log_every = live.config.train.log_every
        losses = {labels["term"]: v for labels, v in value[("Loss terms", "A")]}
        if n >= log_every:
            record = live.train_log()[n // log_every * log_every]
            expected = {k: v for k, v in record.items() if k not in ("iteration", "lr")}
            assert losses == expected, (n, losses, expected)
            self.seen(phase, self.query_of("Loss terms", "A"), f"total {losses['total']:.6f}",
                      f"train_log.jsonl it {record['iteration']}: {expected['total']:.6f}")  # fmt: skip
        else:
            assert losses == {}
        lrs = {labels["group"]: v for labels, v in value[("Learning rate by parameter group", "A")]}
        expected_lrs = {g: live.learning_rate(g, n, planned) for g in lrs}
        groups = {"backbone", "aspp", "classifiers"} if live.index == 0 else {
            "backbone", "aspp", "old_classifiers", "new_classifier"}  # fmt: skip
        assert set(lrs) == groups and lrs == expected_lrs, (n, lrs, expected_lrs)
        self.seen(phase, self.query_of("Learning rate by parameter group", "A"),
                  f"backbone {lrs['backbone']:.6g}", f"schedule(it {n}) {expected_lrs['backbone']:.6g}")  # fmt: skip

        every = live.config.train.checkpoint_every
        saved = [k for k in range(every, n + 1, every) if k < planned]
        counts = {len(saved)} | ({len(saved) - 1} if saved and saved[-1] == n else set())
        sizes = {live.periodic_bytes.get(k, -1) for k in saved[-2:]}  # -1: deleted unseen
        if n == planned:  # the final checkpoint may be saved already
            counts |= {len(saved) + 1}
            if Path(live.where.checkpoint, "meta.json").is_file():
                sizes.add(live.checkpoint_bytes())
        for _, seen in value[("Checkpoints saved", "A")]:
            assert seen in counts, (n, seen, counts)
            self.seen(phase, self.query_of("Checkpoints saved", "A"), f"{seen:g}", str(counts))
        for _, seen in value[("Checkpoint size", "A")]:
            assert int(seen) in sizes or -1 in sizes, (n, seen, sizes)
            self.seen(phase, self.query_of("Checkpoint size", "A"), f"{seen:.0f}",
                      f"files of the last checkpoint {sorted(sizes)}")  # fmt: skip

        for q, rows in self.by_query(results, "Samples per second"):
            for _, seen in rows:  # 0 when a hold outlasted the rate window; > 0 seen at least once
                assert seen >= 0, seen
                live.sampled = live.sampled or seen > 0
                self.seen(phase, q, f"{seen:.3g}", "≥ 0, > 0 once (rate of dkd_samples_total)")
        for panel in ("Iteration time", "Data-loader wait and compute", "Checkpoint save time"):
            for q, rows in self.by_query(results, panel):
                for _, seen in rows:  # NaN: no observation in the window (no save, say)
                    assert math.isnan(seen) or 0 <= seen < 60, (panel, seen)
                    self.seen(phase, q, f"{seen:.3g}", "≥ 0 s, or NaN without observations")
        for q, rows in self.by_query(results, "Share of iteration time waiting for data"):
            for _, seen in rows:
                assert math.isnan(seen) or 0 <= seen <= 1, seen
                self.seen(phase, q, f"{seen:.3g}", "0..1")
        for _, rows in self.by_query(results, "GPU memory (rank 0)"):
            assert rows == [], rows  # CPU: PyTorch allocates no CUDA memory
        [(q, rows)] = self.by_query(results, "Running steps")
        [(labels, _)] = rows
        described = (labels["backbone"], labels["world_size"], labels["task"])
        assert described == ("tiny", str(live.processes), "toy:4-1"), labels
        self.seen(phase, q, f"1 row: {labels['run_id']} step {labels['ciss_step']}",
                  f"1 row: {live.run_id} step {live.index}")  # fmt: skip
        return n

    def query_of(self, panel: str, ref: str) -> Query:
        [q] = [q for q in self.queries if (q.panel, q.ref) == (panel, ref)]
        return q

    def check_finished(self, results, live: Step | None, running: bool, phase: str) -> None:
        """Results panels: exactly the finished steps that are not running, each as it wrote.

        `live`: the step whose process runs. Its results show once it evaluated where a
        panel does not hide running steps (`unless ... dkd_info`), and everywhere once its
        live series ended, before the process has exited.
        """
        expected_steps = {s.key for s in self.finished}
        finished = [*self.finished]
        optional = set()
        if live is not None and live.run_id is not None:
            finished.append(live)
            optional.add(live.key)
        miou_keys = {"old": "miou_old", "new": "miou_new", "all": "miou_all", "hiou": "hiou"}
        truth = {s.key: s for s in finished}
        for panel in ("Test mIoU after each CISS step", "Test mIoU and pixel accuracy over time",
                      "Finished steps"):  # fmt: skip
            for q, rows in self.by_query(results, panel):
                keys = {(labels["run_id"], labels["ciss_step"]) for labels, _ in rows}
                hidden = running and "unless" in q.expr  # the live step's results are hidden
                allowed = expected_steps | (set() if hidden else optional)
                assert expected_steps <= keys <= allowed, (panel, q.ref, keys, expected_steps)
                for labels, seen in rows:
                    step = truth[(labels["run_id"], labels["ciss_step"])]
                    if not Path(step.where.checkpoint, "meta.json").is_file():
                        continue  # evaluated, results not all written yet: check next time
                    results_json = step.test_results()
                    if "dkd_final_iterations" in q.expr:
                        expected, what = step.planned, "iterations planned"
                    elif "dkd_final_loss" in q.expr:
                        record = step.train_log()[step.last_logged_iteration()]
                        expected, what = record["total"], "last train_log.jsonl total"
                    elif "dkd_final_checkpoint_bytes" in q.expr:
                        expected, what = step.checkpoint_bytes(), "final checkpoint files"
                    elif "dkd_eval_pixel_accuracy_ratio" in q.expr:
                        expected = results_json["pixel_accuracy"] / 100
                        what = "metrics.json pixel_accuracy / 100"
                    else:
                        group = labels.get("group") or re.search(r'group="(\w+)"', q.expr)[1]
                        key = miou_keys[group]
                        expected, what = results_json[key] / 100, f"metrics.json {key} / 100"
                    assert seen == expected, (panel, q.ref, labels, seen, expected)
                    assert labels["namespace"] == NAMESPACE, labels
                    self.seen(phase, q, f"{labels['run_id']} s{labels['ciss_step']}"
                              f"{' ' + labels['group'] if 'group' in labels else ''}: {seen:.6g}",
                              f"{what}: {expected:.6g}")  # fmt: skip
                if panel == "Test mIoU after each CISS step":
                    for labels, _ in rows:  # the bar chart's row field
                        assert labels["step"] == f"{labels['run_id']} step {labels['ciss_step']}"

    def check_variables(self, live: Step | None) -> None:
        steps = [*self.finished, *([live] if live and live.scraped else [])]
        if not steps:
            return
        for name, selector, label in self.variables:
            values = self.monitoring.label_values(selector, label)
            expected = {
                "namespace": {NAMESPACE}, "run": {RUN_NAME}, "task": {"toy:4-1"},
                "run_id": {s.run_id for s in steps}, "ciss_step": {str(s.index) for s in steps},
            }[name]  # fmt: skip
            assert expected <= values, (name, values, expected)


FIRST_HOLD = 12  # past two train-log records (log_every 5), before the first checkpoint (40)
STEP_TIMEOUT_SECONDS = 900  # a step held at an iteration Prometheus never shows: fail, not hang


def write_hold(path: Path, iteration: int | None) -> None:
    """Hold the training after `iteration` (None: hold nowhere), atomically."""
    partial = path.with_suffix(".tmp")
    partial.write_text("" if iteration is None else str(iteration))
    partial.replace(path)


def next_hold(seen: int, planned: int) -> int | None:
    """After the first hold: one past half the planned iterations, then the last one."""
    for iteration in ((planned + 1) // 2, planned):
        if iteration > seen:
            return iteration
    return None


def train_and_check(monitoring: Monitoring, checker: Checker, step: Step) -> None:
    """Run one step as its own process, checking the dashboard until its results show.

    The step waits at chosen iterations (`dkd_core.hold_for_tests`) until a check has
    seen that iteration scraped, so every step is seen at least at three iterations,
    one of them its last, however fast or slow the machine trains.
    """
    port = free_port()
    job_name = f"dkd-{RUN_NAME}-step-{step.index}-{step.output.name}"
    monitoring.scrape_pod(port, job_name)
    env = {k: v for k, v in os.environ.items() if k != "DKD_RUN_ID"}
    env = {k: v for k, v in env.items() if k != "PUSHGATEWAY_URL"}
    env |= {"POD_NAMESPACE": NAMESPACE, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            **({"PUSHGATEWAY_URL": monitoring.pushgateway_url} if step.push else {}),
            **({"DKD_RUN_ID": step.run_id} if step.run_id else {})}  # fmt: skip
    log_path = step.output.parent / f"{step.output.name}-step{step.index}.log"
    hold_file = log_path.with_suffix(".hold")
    write_hold(hold_file, FIRST_HOLD)
    env[HOLD_FILE_ENV] = str(hold_file)
    with open(log_path, "w") as log:
        launcher = [sys.executable]
        if step.processes > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone",
                         f"--nproc_per_node={step.processes}"]  # fmt: skip
        proc = subprocess.Popen(
            [*launcher, "-m", "dkd_core", "train", "--config", str(CONFIGS / "toy.yaml"),
             "--step", str(step.index), *step.overrides(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            iterations, held, holding = set(), [], FIRST_HOLD
            deadline = time.monotonic() + STEP_TIMEOUT_SECONDS
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"held at {holding}, never seen: {iterations}"
                n = checker.run_all(step, step.label)
                if n is not None:
                    iterations.add(n)
                if n is not None and n == holding:  # scraped and checked: let it go on
                    assert step.planned is not None and step.planned > FIRST_HOLD, step.planned
                    held.append(n)
                    holding = next_hold(n, step.planned)
                    write_hold(hold_file, holding)
                time.sleep(0.3)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert len(iterations) >= 3, f"only {sorted(iterations)} seen: too few scrapes while training"
    assert held == [FIRST_HOLD, (step.planned + 1) // 2, step.planned], (held, step.planned)
    assert step.sampled, "samples per second never above 0 while training"
    meta = json.loads(Path(step.where.checkpoint, "meta.json").read_text())
    assert meta["run_id"] == step.run_id  # the live series' run id is the recorded one
    monitoring.write_targets([])  # the pod is gone
    checker.finished.append(step)
    deadline = time.monotonic() + 30
    while True:  # until Prometheus has seen the pod go and the Pushgateway's new group
        try:
            checker.run_all(None, step.label + ", after")
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow  # about 45 s on 2 cores
@NEEDS_BINARIES
def test_every_dashboard_query_matches_the_training_across_steps_and_a_rerun(
    monitoring, toy_root, tmp_path
):
    checker = Checker(monitoring)
    # Step 1 runs as two processes: the loss shown must be their average, as in the train log.
    first = [
        Step(
            f"first run, step {i}",
            toy_root,
            tmp_path / "first",
            i,
            None,
            processes=i + 1,
            epochs=6 if i == 0 else 18,
        )
        for i in (0, 1)
    ]
    # Run again with another seed, as a new pipeline run would: other losses, another mIoU;
    # without a Pushgateway, so its results must come from its last scrape.
    rerun = Step("re-run, step 0", toy_root, tmp_path / "second", 0, RERUN_ID, seed=2, push=False)
    for step in (*first, rerun):
        train_and_check(monitoring, checker, step)
    # The steps of one run share the id the first generated (recorded in its checkpoint).
    assert first[0].run_id == first[1].run_id and len(first[0].run_id) == 12
    assert rerun.run_id == RERUN_ID
    assert rerun.test_results()["miou_all"] != first[0].test_results()["miou_all"]
    # Every query returned data at some point, except where this machine has no GPU.
    for q in checker.queries:
        if q.panel in GPU_PANELS:
            continue
        assert (q.panel, q.ref) in checker.had_data, f"{q.panel} {q.ref}: never any data"
    lines = ["| phase | panel | query | value seen | value expected |", "|---|---|---|---|---|"]
    for (phase, panel, ref), rows in checker.report.items():
        seen, expected = ("; ".join(r[i] for r in rows) for i in (0, 1))
        lines.append(f"| {phase} | {panel} | {ref} | {seen} | {expected} |")
    lines.append(f"| all | {GPU_PANELS[0]} | A, B | (no data: no CUDA) | parses |")
    for panel in GPU_PANELS[1:]:
        lines.append(f"| all | {panel} | A | (no data: no GPU) | parses; values: next test |")
    print("\n".join(lines))


@NEEDS_BINARIES
def test_a_step_that_starts_again_deletes_its_pushed_group(monitoring):
    """Same run id and step: the new attempt removes what the earlier one pushed."""

    def groups() -> list[dict[str, str]]:
        body = http_get(f"{monitoring.pushgateway_url}/api/v1/metrics")
        return [g["labels"] for g in body["data"] if g["labels"].get("run") == "restart-test"]

    earlier = TrainingMetrics("restart-test", "kfp-run-9", "toy:4-1", 1)
    other_run = TrainingMetrics("restart-test", "kfp-run-8", "toy:4-1", 1)
    for m in (earlier, other_run):
        m.observe_evaluation(50.0, 40.0, 45.0, 44.4, 90.0)
        m.finish(iterations=10, checkpoint_bytes=100)
        assert m.push(monitoring.pushgateway_url)
    assert {g["run_id"] for g in groups()} == {"kfp-run-9", "kfp-run-8"}
    again = TrainingMetrics("restart-test", "kfp-run-9", "toy:4-1", 1)
    assert again.delete_pushed(monitoring.pushgateway_url)
    assert [g["run_id"] for g in groups()] == ["kfp-run-8"]  # another run's results stay


@NEEDS_BINARIES
def test_gpu_panels_read_dcgm_exporter_labels_with_and_without_honor_labels(monitoring):
    """dcgm-exporter names the pod using each GPU in its own pod/namespace labels; scraped
    without honorLabels (the default) Prometheus keeps them as exported_pod/exported_namespace."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    labels = ("gpu", "UUID", "modelName", "Hostname", "container", "namespace", "pod")
    servers, expected = [], {}
    for honor, gpu, pod, used in ((False, "0", "dkd-a-step-1-master-0", 1000.0),
                                  (True, "1", "dkd-b-step-1-worker-0", 2000.0)):  # fmt: skip
        registry = CollectorRegistry()
        used_by = (f"GPU-{gpu}", "H200", "gpu-node-1", "pytorch", "gpu-team", pod)
        idle = ("GPU-7", "H200", "gpu-node-1", "", "", "")  # a GPU no pod uses: not shown
        for name, value in (("DCGM_FI_DEV_FB_USED", used), ("DCGM_FI_DEV_GPU_UTIL", used / 20)):
            gauge = Gauge(name, name, labels, registry=registry)
            gauge.labels(gpu, *used_by).set(value)
            gauge.labels("7", *idle).set(1.0)
        server, thread = start_http_server(0, "127.0.0.1", registry=registry)
        servers.append((server, thread))
        target = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-x",
                  "container": "nvidia-dcgm-exporter", "service": "nvidia-dcgm-exporter",
                  "endpoint": "gpu-metrics", "job": "nvidia-dcgm-exporter"}  # fmt: skip
        monitoring.write_targets(
            [{"targets": [f"127.0.0.1:{server.server_port}"], "labels": target}],
            monitoring.root / f"dcgm-{honor}.json",
        )
        expected[("gpu-team", pod, gpu)] = used
    values = {**VARIABLES, "namespace": "gpu-team", "run": ALL, "run_id": ALL, "task": ALL,
              "ciss_step": ALL}  # fmt: skip
    board = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in board["panels"]}
    try:
        deadline = time.monotonic() + 30
        while True:
            at = time.time() - 0.5
            seen = {
                title: {
                    (m["namespace"], m["pod"], m["gpu"]): v
                    for m, v in monitoring.query(substitute(t["expr"], values), at)
                }
                for title in GPU_PANELS[1:]
                for t in panels[title]["targets"]
            }
            want = {
                "GPU framebuffer used (DCGM)": expected,
                "GPU utilisation (DCGM)": {k: v / 20 for k, v in expected.items()},
            }
            if seen == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert seen == want  # both label layouts, each GPU once, under the training pod's name
    finally:
        for honor in (False, True):
            monitoring.write_targets([], monitoring.root / f"dcgm-{honor}.json")
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join()


@NEEDS_BINARIES
def test_promtool_finds_nothing_to_criticise_in_the_exposition(tmp_path):
    m = TrainingMetrics("r", "kfp-run-1", "voc:15-1", 1)
    m.set_info(backbone="resnet101", world_size=2)
    m.set_plan(10)
    m.observe_iteration(
        iteration=1, epoch=0, samples=4, learning_rates={"backbone": 0.1},
        data_wait_seconds=0.01, compute_seconds=0.1, losses={"total": 1.0},
    )  # fmt: skip
    m.observe_checkpoint(0.02, 100)
    m.observe_evaluation(50.0, 40.0, 45.0, 44.4, 90.0)
    m.finish(iterations=10, checkpoint_bytes=100)
    promtool = shutil.which("promtool") or str(Path(PROMETHEUS).with_name("promtool"))
    for registry in (m.registry, m.final_registry):
        result = subprocess.run(
            [promtool, "check", "metrics"], input=generate_latest(registry),
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0 and not result.stdout + result.stderr, result
