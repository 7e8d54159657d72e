"""What a local pipeline run prints (`pipelines.local.quiet_tasks`), without running one."""

import logging
import sys

from pipelines.local import ExecutorLines, parallel_tasks_logging, quiet_tasks

#: A task's output as the KFP executor (kfp 2.17) and a component write it.
TASK_OUTPUT = """\
[KFP Executor 2026-12-01 22:40:16,006 INFO]: Looking for component `split_data` in ...
[KFP Executor 2026-12-01 22:40:16,007 INFO]: Got executor_input:
{
    "inputs": {
        "parameterValues": {
            "overrides": [
                "train.metrics_port=-1"
            ]
        }
    }
}
step 0: 282 train images, 69 test images
    {"a nested brace the component printed": 1}
}
[KFP Executor 2026-12-01 22:40:18,403 INFO]: Wrote executor output file to /x/executor_output.json.
2026-12-01 22:41:00,000 dkd_core.progress INFO step 0: iteration 10/60 (17%), loss 0.5, ETA 1m
"""


def test_the_executors_lines_and_its_input_dump_are_told_apart():
    executor = ExecutorLines()
    kept = [line for line in TASK_OUTPUT.splitlines(True) if not executor.is_executor(line)]
    assert kept == [
        "step 0: 282 train images, 69 test images\n",
        '    {"a nested brace the component printed": 1}\n',
        "}\n",
        "2026-12-01 22:41:00,000 dkd_core.progress INFO step 0: iteration 10/60 (17%), loss 0.5, "
        "ETA 1m\n",
    ]


def fake_task(tmp_path, code: int) -> list[str]:
    script = tmp_path / "task.py"
    script.write_text(
        f"import sys\nsys.stdout.write({TASK_OUTPUT!r})\n"
        f"print('boom', file=sys.stderr)\nsys.exit({code})\n"
    )
    return [sys.executable, str(script)]


def test_quiet_tasks_hide_the_executor_unless_the_task_fails(tmp_path, capsys):
    from kfp.local import subprocess_task_handler as handler

    original = handler.run_local_subprocess
    with quiet_tasks(verbose=False):
        assert handler.run_local_subprocess is not original
        assert handler.run_local_subprocess(fake_task(tmp_path, 0), {"X": "1"}) == 0
        shown = capsys.readouterr().out
        assert "[KFP Executor" not in shown and "parameterValues" not in shown
        assert "step 0: 282 train images" in shown and "iteration 10/60" in shown
        assert "boom" in shown  # stderr is merged, as kfp.local does

        assert handler.run_local_subprocess(fake_task(tmp_path, 3), None) == 3
        shown = capsys.readouterr().out
        before, whole = shown.split("--- the task failed (exit code 3); its whole output: ---\n")
        assert "[KFP Executor" not in before and "boom" in before
        assert whole.startswith("[KFP Executor") and '"parameterValues"' in whole
        assert "boom" in whole and whole.endswith("--- end of the failed task's output ---\n")
    assert handler.run_local_subprocess is original
    with quiet_tasks(verbose=True):  # kfp.local's own runner, seen through (it notes the seed)
        assert handler.run_local_subprocess(fake_task(tmp_path, 0), None) == 0
        assert "[KFP Executor" in capsys.readouterr().out
    assert handler.run_local_subprocess is original


def test_quiet_tasks_label_a_tasks_lines_with_its_seed(tmp_path, capsys):
    from kfp.local import subprocess_task_handler as handler

    script = tmp_path / "task.py"
    script.write_text("print('step 0: iteration 2/16')\nprint('  indented')\n")
    executor_input = '{"inputs": {"parameterValues": {"seed": 4}}}'
    command = [sys.executable, str(script), "--executor_input", executor_input]
    with quiet_tasks(verbose=False, label_seeds=True):
        assert handler.run_local_subprocess(command, None) == 0
    # kfp.local's indent (4 spaces), then the seed, then the line as the task printed it
    assert (
        capsys.readouterr().out == "    [seed 4] step 0: iteration 2/16\n    [seed 4]   indented\n"
    )
    with quiet_tasks(verbose=False):  # one seed: the lines as they are
        assert handler.run_local_subprocess(command, None) == 0
    assert capsys.readouterr().out == "    step 0: iteration 2/16\n      indented\n"


def test_two_tasks_at_once_lose_no_record_and_leave_print_as_it_was():
    """kfp.local's per-task logging contexts, ended out of order as two threads end them."""
    import builtins

    from kfp.local import logging_utils

    root = logging.getLogger()
    level, printer = root.level, builtins.print
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    keep = Keep()
    with parallel_tasks_logging():
        first, second = logging_utils.local_logger_context(), logging_utils.local_logger_context()
        first_print, second_print = logging_utils.indented_print(), logging_utils.indented_print()
        for context in (first, second, first_print, second_print):
            context.__enter__()
        first.__exit__(None, None, None)  # the first task ends ...
        first_print.__exit__(None, None, None)
        root.addHandler(keep)
        logging.info("Task 'evaluate-2' finished with status SUCCESS")  # ... the second's record
        root.removeHandler(keep)
        second.__exit__(None, None, None)
        second_print.__exit__(None, None, None)
        assert builtins.print is not printer  # kfp.local left its indenting print behind
    assert seen == ["Task 'evaluate-2' finished with status SUCCESS"]
    assert builtins.print is printer and root.level == level


def test_quiet_tasks_drop_kfp_locals_artifact_dumps_only():
    root = logging.getLogger()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with quiet_tasks(verbose=False):
            logging.info("Executing task \x1b[96m'train-step'\x1b[0m")
            logging.info("Streamed logs:\n")
            logging.info("Task \x1b[96m'train-step'\x1b[0m finished with status SUCCESS")
            logging.info("Task \x1b[96m'train-step'\x1b[0m outputs:\n    model: Model( name=...")
            logging.info("Task \x1b[96m'report'\x1b[0m has no outputs")
        logging.info("Streamed logs:\n")  # the filter is gone after the run
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert seen == [
        "Executing task \x1b[96m'train-step'\x1b[0m",
        "Task \x1b[96m'train-step'\x1b[0m finished with status SUCCESS",
        "Streamed logs:\n",
    ]
