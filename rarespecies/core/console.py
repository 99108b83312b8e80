"""The one command-line convention of `rarespecies`, every stage and every flow.

Commands are typer commands. An error prints one line, `<command>: error: <message>`, and the
exit code says what to do next (the README lists them):

- 0: done;
- 1: failed, and the same command fails the same way until its input or settings change;
- 2: bad usage (an unknown option, a missing argument: typer's own code);
- 75: a rerun may succeed (network, a busy server, a held lock): EX_TEMPFAIL of sysexits.h.

`--debug` or `RARESPECIES_DEBUG=1` shows the traceback instead of the line.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Annotated

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TEMPFAIL, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
DEBUG_ENV = "RARESPECIES_DEBUG"
PIPELINE_EXTRA = "pip install '.[pipeline]'"

Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]


class Failure(RuntimeError):
    """An expected failure; `transient` when a rerun may succeed (exit code 75)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def debugging(flag: bool = False) -> bool:
    """Whether tracebacks are wanted: `--debug` given, or RARESPECIES_DEBUG set (not 0)."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(error: BaseException) -> str:
    """The message of an error; for a package the base install lacks, the fix too."""
    if isinstance(error, ModuleNotFoundError):
        return f"{error}: this command needs the pipeline extra, {PIPELINE_EXTRA}"
    return str(error) or type(error).__name__


def exit_code(error: BaseException) -> int:
    """75 when the error says a rerun may succeed, else 1."""
    return EXIT_TEMPFAIL if getattr(error, "transient", False) is True else EXIT_FAILED


class _WithoutTraceback(logging.Filter):
    """Keeps a library's log line of a failure (Prefect's), drops its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def one_line_errors(command: str, debug: bool = False,
                    loggers: tuple[str, ...] = ()) -> Iterator[None]:
    """Turn any exception raised in the block into one line on stderr and its exit code.

    Args:
        command: the name printed before the message.
        debug: re-raise instead (also when RARESPECIES_DEBUG is set).
        loggers: loggers that log the same failure with a traceback (Prefect's run loggers);
            their records lose the traceback unless debugging.
    """
    debug = debugging(debug)
    quiet = _WithoutTraceback()
    handles = [] if debug else [logging.getLogger(name) for name in loggers]
    for logger in handles:
        logger.addFilter(quiet)
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo(f"{command}: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as error:
        if debug:
            raise
        typer.echo(f"{command}: error: {describe(error)}  (--debug shows the traceback)",
                   err=True)
        raise typer.Exit(exit_code(error)) from None
    finally:
        for logger in handles:
            logger.removeFilter(quiet)


def run_stage(name: str, work: Callable[[], str], debug: bool = False) -> None:
    """Run a stage's work and print its one-line summary with the time it took.

    Args:
        name: the stage as DVC names it, e.g. `train@convnext_full`.
        work: does the work and returns a summary.
        debug: show tracebacks.
    """
    start = time.perf_counter()
    with one_line_errors(name, debug):
        summary = work()
    typer.echo(f"{name}: {summary} [{time.perf_counter() - start:.1f} s]")


def run_command(function: Callable[..., None]) -> None:
    """Run a typer command function as the program (a stage's or a flow's `__main__`)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(function)
    try:
        app()
    finally:
        _skip_teardown()


def _skip_teardown() -> None:
    """Spare the process Python's teardown of every object it made: 0.7-0.9 s after
    TensorFlow, per stage. Frozen objects are never collected, so a file left open in a
    reference cycle would never be written: every open file is flushed first. atexit
    handlers still run."""
    for obj in gc.get_objects():
        # type(), not isinstance(): no attribute of a proxy or lazy module is touched.
        if issubclass(type(obj), io.IOBase):
            # Nothing here may replace the command's exit: a stream closed meanwhile, or one
            # that cannot flush (a broken pipe), is left as it is.
            with suppress(Exception):
                if not obj.closed:
                    obj.flush()
    gc.freeze()
