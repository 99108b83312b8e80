"""Stages and flows run under whatever `python` is first on PATH (DVC starts stages through the
shell). This makes sure it is one with the pipeline's packages. Standard library only: it runs
before anything else is imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# A few packages of the pipeline extra: if these import, the interpreter is the project's.
REQUIRED = ("numpy", "PIL", "yaml", "pydantic", "typer")
VENV = Path(__file__).resolve().parents[2] / ".venv"
_RESTARTED = "RARESPECIES_INTERPRETER_RESTARTED"  # guards against a restart loop


def missing_packages() -> list[str]:
    """The required packages this interpreter cannot import."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def ensure_project_interpreter() -> None:
    """Return if this interpreter has the pipeline's packages; else restart the command in the
    project's `.venv/bin/python` when there is one, or exit in one line naming the fix."""
    missing = missing_packages()
    if not missing:
        return
    argv = sys.orig_argv
    program = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else " ".join(argv[1:2])
    python = VENV / "bin" / "python"
    inside = Path(sys.prefix).resolve() == VENV.resolve()
    if python.is_file() and not inside and not os.environ.get(_RESTARTED):
        os.environ[_RESTARTED] = "1"
        os.execv(str(python), [str(python), *sys.orig_argv[1:]])
    sys.stderr.write(
        f"{program}: error: {sys.executable} lacks {', '.join(missing)}: run `make install` "
        "in the project (it creates .venv), then `source .venv/bin/activate`; or "
        "`pip install -e '.[pipeline]'` into this interpreter\n")
    sys.exit(1)
