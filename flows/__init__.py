"""Prefect flows that drive the DVC pipeline."""

import os

# The flows run on machines without internet access: keep Prefect's local server from
# trying to report usage (its telemetry write also races the flow's own first DB writes).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
