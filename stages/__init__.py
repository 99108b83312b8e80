"""One thin module per dvc.yaml stage: it parses its arguments, reads its own params.yaml keys
and paths, and calls the `rarespecies` package. Not installed: DVC runs them from the project
root as `python -m stages.<stage> [NAME] [--debug]`."""

import sys

from rarespecies.core.interpreter import ensure_project_interpreter

ensure_project_interpreter()

# Keras imports scikit-learn, and with it SciPy's statistics, as it starts, for wrappers no
# stage uses: 0.9 s of every stage that imports Keras. No stage or module of the package
# imports scikit-learn (tests/test_layout.py); the tests check the metrics against it.
sys.modules.setdefault("sklearn", None)
