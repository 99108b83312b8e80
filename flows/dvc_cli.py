"""DVC's command line, as the flows call it: this environment's `dvc`, stages on its PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class DvcError(RuntimeError):
    """A DVC command exited with an error."""


class NotAProject(ValueError):
    """The folder is not a checkout of the project."""


def project_root(folder: str | Path, hint: str = "pass the project folder") -> Path:
    """`folder`, resolved, if it holds the project's dvc.yaml; else NotAProject with `hint`."""
    path = Path(folder).resolve()
    if not (path / "dvc.yaml").is_file():
        raise NotAProject(f"{path} is not a checkout of the project (no dvc.yaml): {hint}")
    return path


def dvc(*args: str, cwd: str | Path, check: bool = False) -> subprocess.CompletedProcess:
    """Run `dvc ARGS` in `cwd` with this interpreter's bin folder first on PATH.

    Stages run `python -m ...` through the shell, so they must find the same environment.

    Args:
        args: the DVC command line after `dvc`.
        cwd: the DVC project (or an experiment's checkout).
        check: raise DvcError naming the command and DVC's last lines when it fails.

    Returns:
        The finished process, output captured as text.
    """
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(bin_dir / "dvc"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed: {last_lines(proc)}")
    return proc


def last_lines(proc: subprocess.CompletedProcess, count: int = 3) -> str:
    """The last non-empty lines of a command's output, joined: the readable part of an error."""
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return " | ".join(lines[-count:]) or f"exit code {proc.returncode}"
