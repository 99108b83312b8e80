"""DVC's command line, the one way this project runs it: this environment's `dvc`, with this
environment's `python` first on PATH, because DVC runs every stage's `python -m stages...`
through the shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def dvc(*args: str, cwd: str | Path = ".", check: bool = False) -> subprocess.CompletedProcess:
    """Run `dvc ARGS` in `cwd`, output captured as text.

    Args:
        args: the DVC command line after `dvc`.
        cwd: the DVC project (or an experiment's checkout).
        check: raise DvcError naming the command and DVC's last lines when it fails.

    Returns:
        The finished process.
    """
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    proc = subprocess.run([executable(), *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed: {last_lines(proc)}")
    return proc


def last_lines(proc: subprocess.CompletedProcess, count: int = 3) -> str:
    """The last non-empty lines of a command's output, joined: the readable part of an error."""
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return " | ".join(lines[-count:]) or f"exit code {proc.returncode}"
