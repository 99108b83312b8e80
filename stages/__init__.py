"""One thin module per dvc.yaml stage: it parses its arguments, reads its own params.yaml keys
and paths, and calls the `rarespecies` package. Not installed: DVC runs them from the project
root as `python -m stages.<stage> [NAME] [--debug]`."""

from rarespecies.core.interpreter import ensure_project_interpreter

ensure_project_interpreter()
