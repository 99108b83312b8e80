"""A stage or flow started by an interpreter without the pipeline's packages (the first
`python` on PATH in a fresh shell) restarts in the project's .venv, or says in one line how to
get one."""

import os
import subprocess
import sys

import pytest

from conftest import copy_project


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python with nothing installed, like the system Python of a fresh shell."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin/python")


def bare(python: str, *args: str, cwd) -> subprocess.CompletedProcess:
    # A fresh shell's environment: no PYTHONPATH, no virtual environment on PATH.
    return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


@pytest.fixture(scope="module")
def project_with_venv(tmp_path_factory):
    """A checkout whose .venv is the environment running these tests."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    os.symlink(sys.prefix, project / ".venv")
    return project


@pytest.mark.parametrize("module", ["stages.split", "flows.pipeline"])
def test_a_bare_interpreter_restarts_in_the_projects_venv(bare_python, project_with_venv,
                                                          module):
    proc = bare(bare_python, "-m", module, "--help", cwd=project_with_venv)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "--debug" in proc.stdout


def test_without_a_venv_it_names_the_fix_in_one_line(bare_python, tmp_path):
    project = copy_project(tmp_path / "project")
    proc = bare(bare_python, "-m", "stages.split", cwd=project)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"stages.split: error: {bare_python} lacks numpy")
    assert "make install" in proc.stderr and "source .venv/bin/activate" in proc.stderr
