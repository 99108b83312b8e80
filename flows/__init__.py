"""Prefect flows that drive the DVC pipeline, over the `rarespecies` package. Not installed: run
from the project root as `python -m flows.<flow>` (or by a Prefect worker in a checkout)."""

import os

from rarespecies.core.interpreter import ensure_project_interpreter

ensure_project_interpreter()
# The flows run on machines without internet access: keep Prefect's local server from
# trying to report usage (its telemetry write also races the flow's own first DB writes).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
