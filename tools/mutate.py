"""Mutation testing of the method's modules: does some test fail when the code changes?

For each module, every simple change below is applied in turn to a private
copy of the repository, and the module's tests run against it:

- comparisons flipped (< <=, > >=, == !=, is / is not, in / not in);
- arithmetic operators swapped (+ -, * /, // /, ** *);
- numeric constants moved (ints by +1 and -1, floats by +10%, 0.0 to 1.0);
- True / False swapped, `not` removed, `and` / `or` swapped, unary minus removed;
- a statement removed (calls and augmented assignments, not logging);
- a keyword argument removed from a call.

Messages (f-strings, raised exceptions), logging calls, imports, annotations
and literal data tables (six or more constants, e.g. the shuffled class
orders, which `tasks` checks at import) are not mutated.

A mutant is *killed* when a test fails (or the run exceeds its timeout), and
*survives* when all pass. A survivor either shows a missing test or is
equivalent (changes nothing observable); known equivalents are listed in
`tools/mutate_equivalent.txt` with the reason, and left out of the kill rate.
Removing a `device=` argument changes nothing when every tensor is on the
CPU: without CUDA those mutants are reported as `cpu-only` and not run.

    python tools/mutate.py                                # every module below
    python tools/mutate.py --module dkd_core/losses.py    # one module
    python tools/mutate.py --module dkd_core/train.py --sample 40 --seed 3
    python tools/mutate.py --module dkd_core/losses.py --list
    python tools/mutate.py --module dkd_core/evaluate.py --match "pred >= n" --match "n * n"
    python tools/mutate.py --module dkd_core/train.py --start 35   # continue at mutant #35
    python tools/mutate.py --module dkd_core/train.py --only 66-70,74   # these mutants only

Results: one line per mutant on stdout, and build/mutate/<module>.json. The
repository itself is never modified (the copy lives in a temporary folder).
Run it niced: it is CPU-bound for minutes to hours (`make mutate`).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = REPO / "tools" / "mutate_equivalent.txt"

# Each module and the tests that pin it: fast ones first (pytest stops at the first
# failure, so most mutants die early), slower ones only reached by the survivors.
MODULE_TESTS: dict[str, list[list[str]]] = {
    "dkd_core/losses.py": [
        ["tests/unit/test_losses.py"],
        ["tests/unit/test_spec_rules.py", "tests/integration/test_train_rules.py"],
        ["tests/unit/test_reference_fidelity.py"],
    ],
    "dkd_core/evaluate.py": [
        ["tests/unit/test_evaluate.py", "tests/unit/test_evaluate_edges.py"],
        ["tests/unit/test_spec_rules.py"],
        ["tests/unit/test_reference_fidelity.py"],
    ],
    "dkd_core/model/deeplab.py": [
        ["tests/unit/test_spec_rules.py"],
        ["tests/unit/test_model.py"],
        ["tests/integration/test_train_rules.py", "tests/unit/test_reference_fidelity.py"],
    ],
    "dkd_core/model/aspp.py": [
        ["tests/unit/test_aspp.py", "tests/unit/test_model.py"],
        ["tests/unit/test_reference_fidelity.py"],
    ],
    "dkd_core/model/resnet.py": [
        ["tests/unit/test_resnet.py", "tests/unit/test_model.py"],
        ["tests/integration/test_train_rules.py", "tests/unit/test_reference_fidelity.py"],
    ],
    "dkd_core/tasks.py": [
        ["tests/unit/test_tasks.py"],
        [
            "tests/unit/test_spec_rules.py",
            "tests/unit/test_splits.py",
            "tests/unit/test_split_edges.py",
        ],
    ],
    "dkd_core/data/splits.py": [
        [
            "tests/unit/test_splits.py",
            "tests/unit/test_split_edges.py",
            "tests/unit/test_split_pass.py",
        ],
        ["tests/unit/test_spec_rules.py", "tests/unit/test_memory.py"],
    ],
    "dkd_core/train.py": [
        ["tests/unit/test_train_parts.py", "tests/unit/test_spec_rules.py"],
        ["tests/integration/test_train_loop.py"],
        ["tests/integration/test_train_rules.py"],
        ["tests/integration/test_train.py"],
    ],
}

COMPARISON_SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}  # fmt: skip
BINOP_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv,
}  # fmt: skip
SYMBOL = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+",
    ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**", ast.Mod: "%",
    ast.And: "and", ast.Or: "or",
}  # fmt: skip


@dataclass
class Mutant:
    """One change: where (function, line), what, and a key stable across line moves."""

    index: int  # position in the deterministic walk of the module
    line: int
    function: str
    description: str  # e.g. "> -> >=" or "remove keyword nesterov"
    snippet: str  # the source of the node before the change
    key: str = ""
    status: str = ""  # killed | survived | timeout | equivalent | error
    seconds: float = 0.0
    stage: int = -1  # the stage of MODULE_TESTS whose failure (or timeout) ended it

    def __post_init__(self) -> None:
        self.key = f"{self.function}: {self.snippet} :: {self.description}"


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _is_logging(call: ast.AST) -> bool:
    """log.info(...), logger.warning(...), print(...), progress bars: output only."""
    if not isinstance(call, ast.Call):
        return False
    func = call.func
    if isinstance(func, ast.Name):
        return func.id == "print"
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id in {"log", "logger", "logging", "progress"}
    return False


class _Sites(ast.NodeVisitor):
    """Walks a module in a fixed order and yields (node path, kind, description) sites."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines()
        self.sites: list[tuple[int, str, str, int, str, str]] = []
        self._counter = 0
        self._function: list[str] = []
        self._in_fstring = 0
        self._in_annotation = 0

    def _add(self, node: ast.AST, kind: str, description: str) -> None:
        line = getattr(node, "lineno", 0)
        # The source line names the mutant in reports and in the equivalents file.
        text = self.lines[line - 1].split("  #")[0] if line else ""  # code, not its comment
        snippet = " ".join(text.split())[:100]
        self.sites.append((id(node), kind, description, line, self._scope(), snippet))

    def _scope(self) -> str:
        return ".".join(self._function) or "<module>"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function.append(node.name)
        for arg_default in node.args.defaults + node.args.kw_defaults:
            if arg_default is not None:
                self.visit(arg_default)
        for stmt in node.body:
            self.visit(stmt)
        self._function.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._function.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self._function.pop()

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:  # dataclass defaults; the annotation is not code
            self.visit(node.value)

    def visit_arg(self, node: ast.arg) -> None:
        return None

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return None  # messages: text only

    def visit_Raise(self, node: ast.Raise) -> None:
        return None  # the exception's message; the condition that raises is still mutated

    def visit_Assert(self, node: ast.Assert) -> None:
        return None

    def visit_Import(self, node: ast.Import) -> None:
        return None

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        return None

    def _is_table(self, node: ast.AST) -> bool:
        """A literal of six or more constants (a class order, a name list): data, not logic."""
        items = node.values if isinstance(node, ast.Dict) else node.elts
        flat = [e for item in items for e in (item.elts if isinstance(item, ast.Tuple) else [item])]
        return len(flat) >= 6 and all(isinstance(e, ast.Constant) for e in flat)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        if not self._is_table(node):
            self.generic_visit(node)

    visit_List = visit_Set = visit_Tuple

    def visit_Compare(self, node: ast.Compare) -> None:
        for op in node.ops:
            swap = COMPARISON_SWAPS.get(type(op))
            if swap is not None:
                self._add(node, "compare", f"{SYMBOL[type(op)]} -> {SYMBOL[swap]}")
                break  # one site per comparison chain
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = BINOP_SWAPS.get(type(node.op))
        if swap is not None:
            self._add(node, "binop", f"{SYMBOL[type(node.op)]} -> {SYMBOL[swap]}")
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = "or" if isinstance(node.op, ast.And) else "and"
        self._add(node, "boolop", f"{SYMBOL[type(node.op)]} -> {other}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._add(node, "not", "remove not")
        elif isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self._add(node, "neg", "remove unary -")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self._add(node, "bool", f"{value} -> {not value}")
        elif isinstance(value, int):
            self._add(node, "int+", f"{value} -> {value + 1}")
            self._add(node, "int-", f"{value} -> {value - 1}")
        elif isinstance(value, float):
            new = 1.0 if value == 0 else value * 1.1
            self._add(node, "float", f"{value!r} -> {new!r}")

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Call) and not _is_logging(node.value):
            self._add(node, "delete", "remove statement")
        if not isinstance(node.value, ast.Constant):
            self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._add(node, "delete", "remove statement")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if not _is_logging(node):
            for kw in node.keywords:
                if kw.arg is not None:
                    self._add(node, f"kwarg:{kw.arg}", f"remove keyword {kw.arg}")
        self.generic_visit(node)


def find_mutants(source: str) -> tuple[ast.Module, list[Mutant], list[tuple[int, str]]]:
    tree = ast.parse(source)
    sites = _Sites(source)
    sites.visit(tree)
    mutants, handles = [], []
    for i, (node_id, kind, description, line, function, snippet) in enumerate(sites.sites):
        mutants.append(Mutant(i, line, function, description, snippet))
        handles.append((node_id, kind))
    # Keys must be unique: number repeats within a function.
    seen: dict[str, int] = {}
    for m in mutants:
        n = seen.get(m.key, 0)
        seen[m.key] = n + 1
        if n:
            m.key = f"{m.key} #{n + 1}"
    return tree, mutants, handles


class _Apply(ast.NodeTransformer):
    def __init__(self, node_id: int, kind: str, description: str) -> None:
        self.node_id, self.kind, self.description = node_id, kind, description

    def visit(self, node: ast.AST):  # type: ignore[override]
        if id(node) != self.node_id:
            return super().visit(node)
        k = self.kind
        if k == "compare":
            for i, op in enumerate(node.ops):
                if type(op) in COMPARISON_SWAPS:
                    node.ops[i] = COMPARISON_SWAPS[type(op)]()
                    break
        elif k == "binop":
            node.op = BINOP_SWAPS[type(node.op)]()
        elif k == "boolop":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif k in ("not", "neg"):
            return node.operand
        elif k == "bool":
            node.value = not node.value
        elif k == "int+":
            node.value += 1
        elif k == "int-":
            node.value -= 1
        elif k == "float":
            node.value = 1.0 if node.value == 0 else node.value * 1.1
        elif k == "delete":
            return ast.Pass()
        elif k.startswith("kwarg:"):
            name = k.split(":", 1)[1]
            node.keywords = [kw for kw in node.keywords if kw.arg != name]
        return node


def mutated_source(source: str, index: int) -> str:
    """The module's source with mutant `index` applied (a fresh parse each time)."""
    tree, mutants, handles = find_mutants(source)
    node_id, kind = handles[index]
    new_tree = _Apply(node_id, kind, mutants[index].description).visit(tree)
    ast.fix_missing_locations(new_tree)
    return ast.unparse(new_tree) + "\n"


def load_equivalents() -> dict[str, str]:
    """`module | key | reason` lines (comments with #)."""
    out: dict[str, str] = {}
    if EQUIVALENT_FILE.is_file():
        for raw in EQUIVALENT_FILE.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            module, key, reason = (part.strip() for part in line.split(" | ", 2))
            out[f"{module} | {key}"] = reason
    return out


def copy_repository(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
        capture_output=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    for name in files:
        source = REPO / name
        if source.is_file():
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


# Imported once by this process; each test run is a fork that starts with them loaded
# (on a busy 2-core machine importing torch alone takes longer than most test runs).
HEAVY_IMPORTS = ("numpy", "torch", "torch.nn.functional", "PIL.Image", "pytest", "yaml",
                 "safetensors.torch")  # fmt: skip


def _preload() -> None:
    import importlib

    for name in HEAVY_IMPORTS:
        importlib.import_module(name)
    if any(name == "dkd_core" or name.startswith(("dkd_core.", "tests.")) for name in sys.modules):
        sys.exit("the code under test must not be imported before forking")


def _forked_pytest(workdir: Path, args: list[str], timeout: float) -> int | None:
    """Exit status of `pytest args` run in a fork inside `workdir`; None on timeout."""
    pid = os.fork()
    if pid == 0:  # the child: quiet, in the copy, the copy first on the import path
        try:
            os.setpgid(0, 0)  # its own group, so that a timeout also stops what it started
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(workdir)
            os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
            os.environ["PYTHONPATH"] = str(workdir)
            sys.dont_write_bytecode = True
            sys.path.insert(0, str(workdir))
            import pytest

            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *args]))
        except BaseException:
            code = 99
        os._exit(code)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
    finally:
        if pid:  # timed out, or this process is being stopped: the run goes too
            if _own_group(pid):
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def _own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def run_tests(
    workdir: Path, stages: list[list[str]], timeouts: list[float]
) -> tuple[str, float, int]:
    """('killed' | 'survived' | 'timeout', seconds, the stage that ended it: -1 if none).

    The stages run in order and stop at the first failure; each has its own timeout,
    so a mutant that hangs (a loop that never ends) costs a few times that stage's
    normal run, not the whole suite's.
    """
    started = time.perf_counter()
    for n, (tests, timeout) in enumerate(zip(stages, timeouts, strict=True)):
        code = _forked_pytest(workdir, ["-m", "not kind", *tests], timeout)
        if code is None:
            return "timeout", time.perf_counter() - started, n
        if code != 0:
            return "killed", time.perf_counter() - started, n
    return "survived", time.perf_counter() - started, -1


def _imports_the_copy(workdir: Path) -> bool:
    pid = os.fork()
    if pid == 0:
        sys.path.insert(0, str(workdir))
        import dkd_core

        os._exit(0 if Path(dkd_core.__file__).resolve().is_relative_to(workdir.resolve()) else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def baseline(workdir: Path, module: str, stages: list[list[str]]) -> list[float]:
    """Seconds each stage takes on the unmodified code (all must pass)."""
    if not _imports_the_copy(workdir):
        sys.exit(f"tests would not import the copy in {workdir}")
    seconds = []
    for tests in stages:
        status, took, _ = run_tests(workdir, [tests], [1800.0])
        if status != "survived":
            sys.exit(f"{module}: its tests fail on the unmodified code; fix them first")
        seconds.append(took)
    return seconds


# A stage's timeout: this many times its unmodified run, and never under the floor (the
# machine's load varies between the baseline and a mutant's run).
TIMEOUT_FACTOR = 4.0
TIMEOUT_FLOOR_SECONDS = 150.0


def mutate_module(module: str, args, equivalents: dict[str, str], workdir: Path) -> dict:
    path = workdir / module
    original = path.read_text()
    _, mutants, _ = find_mutants(original)
    # --start continues a stopped sweep: only mutants from the N-th of the walk on are
    # candidates (and --sample draws from them).
    candidates = list(range(max(0, args.start - 1), len(mutants)))
    if args.only:
        candidates = [i for i in candidates if i + 1 in args.only]
    if args.match:
        chosen = [i for i in candidates if any(text in mutants[i].key for text in args.match)]
    elif args.sample and args.sample < len(candidates):
        chosen = sorted(random.Random(args.seed).sample(candidates, args.sample))
    else:
        chosen = candidates
    if args.list:
        for i in chosen:
            m = mutants[i]
            print(f"{module}:{m.line} [{m.function}] {m.description}  ({m.snippet})")
        return {}
    stages = MODULE_TESTS[module]
    base = baseline(workdir, module, stages)
    timeouts = [max(TIMEOUT_FLOOR_SECONDS, TIMEOUT_FACTOR * b) for b in base]
    print(f"== {module}: {len(chosen)} of {len(mutants)} mutants; stages take "
          f"{' + '.join(f'{b:.0f}' for b in base)} s unmodified, timeouts "
          f"{' / '.join(f'{t:.0f}' for t in timeouts)} s", flush=True)  # fmt: skip
    results = []
    try:
        for n, i in enumerate(chosen, 1):
            m = mutants[i]
            reason = equivalents.get(f"{module} | {m.key}")
            if reason is not None:
                m.status = "equivalent"
            elif m.description == "remove keyword device" and not _has_accelerator():
                m.status = "cpu-only"  # every tensor is on the CPU here: nothing to observe
            else:
                try:
                    path.write_text(mutated_source(original, i))
                except SyntaxError:  # pragma: no cover - unparse output always parses
                    m.status = "error"
                else:
                    m.status, m.seconds, m.stage = run_tests(workdir, stages, timeouts)
                finally:
                    path.write_text(original)
            results.append(m)
            mark = {"killed": " ", "timeout": "T", "survived": "S", "equivalent": "E",
                    "cpu-only": "C"}  # fmt: skip
            where = f" stage {m.stage} {m.seconds:.0f}s" if m.stage >= 0 else f" {m.seconds:.0f}s"
            print(f"[{n}/{len(chosen)}] #{i + 1} {mark.get(m.status, '?')} {module}:{m.line} "
                  f"[{m.function}] {m.description}  ({m.snippet}){where}", flush=True)  # fmt: skip
    finally:
        path.write_text(original)
    counts = {s: sum(m.status == s for m in results) for s in
              ("killed", "timeout", "survived", "equivalent", "cpu-only", "error")}  # fmt: skip
    relevant = counts["killed"] + counts["timeout"] + counts["survived"]
    rate = (counts["killed"] + counts["timeout"]) / relevant if relevant else 1.0
    summary = {
        "module": module, "mutants_total": len(mutants), "mutants_run": len(results),
        "sampled": bool(args.sample) and len(chosen) < len(candidates), "seed": args.seed,
        "match": args.match,
        "start": args.start, "only": sorted(args.only) if args.only else None, **counts,
        "kill_rate_non_equivalent": rate,
        "survivors": [asdict(m) for m in results if m.status == "survived"],
        "mutants": [asdict(m) for m in results],
    }  # fmt: skip
    out = REPO / "build" / "mutate" / (module.replace("/", ".") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _numbers(text: str) -> set[int]:
    """'66-70,74' -> {66, 67, 68, 69, 70, 74}: mutant numbers as the sweep prints them."""
    numbers: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected numbers like 66-70,74, got {part!r}"
            ) from None
        if low < 1 or high < low:
            raise argparse.ArgumentTypeError(f"expected a range N-M with 1 <= N <= M, got {part!r}")
        numbers.update(range(low, high + 1))
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULE_TESTS),
                        help="module to mutate (repeatable); default: all")  # fmt: skip
    parser.add_argument(
        "--sample", type=int, default=0, help="run only N random mutants per module"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--match", action="append",
                        help="run only the mutants whose key contains this text (repeatable)")  # fmt: skip
    parser.add_argument("--start", type=int, default=1,
                        help="only mutants from the N-th of the walk on (continue a stopped sweep)")  # fmt: skip
    parser.add_argument("--only", type=_numbers, default=None, metavar="N,N-M",
                        help="only these mutants, by their #number (e.g. 66-70,74)")  # fmt: skip
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) unwinds like Ctrl-C: the running tests stop, the copy is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    modules = args.module or list(MODULE_TESTS)
    equivalents = load_equivalents()
    if not args.list:
        _preload()
    summaries = []
    with tempfile.TemporaryDirectory(prefix="dkd-mutate-") as tmp:
        workdir = Path(tmp)
        copy_repository(workdir)
        for module in modules:
            summary = mutate_module(module, args, equivalents, workdir)
            if summary:
                summaries.append(summary)
    if summaries:
        print("\nmodule                      run/total  killed  survived  equivalent  cpu-only"
              "  kill rate")  # fmt: skip
        for s in summaries:
            print(f"{s['module']:<27} {s['mutants_run']:>4}/{s['mutants_total']:<5} "
                  f"{s['killed'] + s['timeout']:>6}  {s['survived']:>8}  {s['equivalent']:>10}  "
                  f"{s['cpu-only']:>8}  {100 * s['kill_rate_non_equivalent']:>8.1f}%"
                  f"{'  (sampled)' if s['sampled'] else ''}")  # fmt: skip
        for s in summaries:
            for m in s["survivors"]:
                print(f"survived: {s['module']} | {m['key']}   (line {m['line']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
