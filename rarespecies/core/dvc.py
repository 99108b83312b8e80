"""DVC's command line, the one way this project runs it: this environment's `dvc`, with this
environment's `python` first on PATH, because DVC runs every stage's `python -m stages...`
through the shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


class DvcError(RuntimeError):
    """A DVC command exited with an error, or DVC is not installed."""


class NotAProject(ValueError):
    """The folder is not a checkout of the project."""


def project_root(folder: str | Path, hint: str = "pass the project folder") -> Path:
    """`folder`, resolved, if it holds the project's dvc.yaml; else NotAProject with `hint`."""
    path = Path(folder).resolve()
    if not (path / "dvc.yaml").is_file():
        raise NotAProject(f"{path} is not a checkout of the project (no dvc.yaml): {hint}")
    return path


def executable() -> str:
    """The `dvc` beside this interpreter (a virtual environment's), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if not found:
        raise DvcError("dvc is not installed here: pip install '.[pipeline]'")
    return found


def dvc(*args: str, cwd: str | Path = ".", check: bool = False,
        on_line: Callable[[str], object] | None = None) -> subprocess.CompletedProcess:
    """Run `dvc ARGS` in `cwd`, output captured as text.

    Args:
        args: the DVC command line after `dvc`.
        cwd: the DVC project (or an experiment's checkout).
        check: raise DvcError naming the command and DVC's last lines when it fails.
        on_line: called with each non-empty line of output (stderr merged into stdout, in
            order) as it comes, e.g. a flow's logger, so a long stage is not silent until it
            ends; a carriage return (a progress bar redrawn in place) ends a line too.

    Returns:
        The finished process (with `on_line`, all output is in `stdout`).
    """
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    if on_line is None:
        proc = subprocess.run([executable(), *args], cwd=cwd, env=env, capture_output=True,
                              text=True)
    else:
        proc = _streamed([executable(), *args], cwd, env, on_line)
    if check and proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed: {last_lines(proc)}")
    return proc


def last_lines(proc: subprocess.CompletedProcess, count: int = 3) -> str:
    """The last non-empty lines of a command's output, joined: the readable part of an error."""
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return " | ".join(lines[-count:]) or f"exit code {proc.returncode}"


def _streamed(command: list[str], cwd: str | Path, env: dict[str, str],
              on_line: Callable[[str], object]) -> subprocess.CompletedProcess:
    """Run `command`, passing each line to `on_line` as it is written; collect the output."""
    lines: list[str] = []
    # Text mode reads universal newlines: "\r" ends a line as "\n" does.
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.strip():
                on_line(line.rstrip())
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines), "")
