"""The one command-line convention: a summary line on success, one error line otherwise, exit
codes 0, 1, 2 and 75, tracebacks only with --debug or RARESPECIES_DEBUG=1."""

import ast
import sys

import pytest
from imports import ROOT

from conftest import run

DEMO = '''
import atexit

from rarespecies.core.console import Debug, Failure, run_command, run_stage

LEFT_OPEN = []


def main(kind: str, debug: Debug = False) -> None:
    def work() -> str:
        if kind == "fail":
            raise ValueError("x.csv line 3: empty family; fix the row")
        if kind == "transient":
            raise Failure("the server is busy", transient=True)
        if kind == "missing":
            import not_a_module_of_the_base_install  # noqa: F401
        if kind == "unclosed":  # what exit must still finish after run_command's gc.freeze
            atexit.register(lambda: open("atexit.txt", "w").write("ran"))
            LEFT_OPEN.append(open("unclosed.txt", "w"))
            LEFT_OPEN[-1].write("flushed")
        return "did it"

    run_stage(f"demo@{kind}", work, debug)


run_command(main)
'''


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.py"
    path.write_text(DEMO)

    def call(*args: str, env: dict | None = None):
        with pytest.MonkeyPatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            return run(sys.executable, str(path), *args, cwd=path.parent, check=False)

    call.folder = path.parent
    return call


def test_success_prints_the_summary_and_its_time(demo):
    proc = demo("ok")
    assert proc.returncode == 0 and proc.stdout.startswith("demo@ok: did it [")


def test_exit_still_runs_atexit_handlers_and_flushes_open_files(demo):
    proc = demo("unclosed")
    assert proc.returncode == 0, proc.stderr
    assert (demo.folder / "atexit.txt").read_text() == "ran"
    assert (demo.folder / "unclosed.txt").read_text() == "flushed"


def test_an_error_is_one_line_with_exit_code_1(demo):
    proc = demo("fail")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "demo@fail: error: x.csv line 3: empty family; fix the row  (--debug shows the "
        "traceback)"]


def test_a_failure_a_rerun_may_fix_exits_75(demo):
    proc = demo("transient")
    assert proc.returncode == 75 and "the server is busy" in proc.stderr


def test_a_missing_package_names_the_pipeline_extra(demo):
    proc = demo("missing")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert "not_a_module_of_the_base_install" in proc.stderr
    assert "pip install '.[pipeline]'" in proc.stderr


def test_bad_usage_exits_2(demo):
    assert demo().returncode == 2
    assert demo("ok", "--no-such-option").returncode == 2


@pytest.mark.parametrize("how", ["--debug", "RARESPECIES_DEBUG=1"])
def test_debug_shows_the_traceback(demo, how):
    proc = (demo("fail", "--debug") if how == "--debug"
            else demo("fail", env={"RARESPECIES_DEBUG": "1"}))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ValueError" in proc.stderr


@pytest.mark.parametrize("path", sorted([*(ROOT / "stages").glob("[!_]*.py"),
                                         *(ROOT / "flows").glob("[!_]*.py")]),
                         ids=lambda p: f"{p.parent.name}.{p.stem}")
def test_every_stage_and_flow_uses_the_convention(path):
    """Each command's `main` takes `--debug` and runs through `run_command` (typer)."""
    if path.stem == "common":
        return
    tree = ast.parse(path.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    entry = functions.get("main") or functions.get("run_once")
    assert entry is not None, f"{path.name} has no main()"
    assert "debug" in {arg.arg for arg in entry.args.args}
    source = path.read_text()
    assert "run_command(main)" in source or "cli()" in source
    assert "argparse" not in source
