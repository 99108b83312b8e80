"""What every flow's command line shares: Prefect's retry rule and one-line errors."""

from __future__ import annotations

from contextlib import AbstractContextManager

from rarespecies.core.console import one_line_errors

# Prefect's engine logs a failed flow or task run, traceback included, on these loggers.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def transient_failure(task, task_run, state) -> bool:
    """Prefect retry condition: only errors marked transient (a held DVC lock, the network)."""
    return getattr(state.result(raise_on_failure=False), "transient", False) is True


def flow_errors(command: str, debug: bool) -> AbstractContextManager[None]:
    """One-line errors for a flow's command line; Prefect's own log lines lose their traceback
    too, unless `--debug`."""
    return one_line_errors(command, debug, PREFECT_RUN_LOGGERS)
