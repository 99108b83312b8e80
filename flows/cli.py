"""What the flows' command lines share: one readable error line unless --debug."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer

# Prefect's engine logs a failed flow or task run, traceback included, on these loggers.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _WithoutTraceback(logging.Filter):
    """Keep Prefect's log line for an expected error, drop its traceback."""

    def __init__(self, errors: tuple[type[Exception], ...]) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def one_line_errors(command: str, debug: bool, *errors: type[Exception]) -> Iterator[None]:
    """Turn `errors` into `<command>: error: <message>` on stderr and exit code 1.

    Args:
        command: the name to print.
        debug: re-raise instead, with the traceback (Prefect's logs keep theirs too).
        errors: the expected failures (bad input, a failed stage); anything else is a bug and
            keeps its traceback.
    """
    quiet = _WithoutTraceback(errors)
    loggers = [] if debug else [logging.getLogger(name) for name in PREFECT_RUN_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    except errors as error:
        if debug:
            raise
        typer.echo(f"{command}: error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
