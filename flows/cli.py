"""What the flows' command lines share: one readable error line unless --debug."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


@contextmanager
def one_line_errors(command: str, debug: bool, *errors: type[Exception]) -> Iterator[None]:
    """Turn `errors` into `<command>: error: <message>` on stderr and exit code 1.

    Args:
        command: the name to print.
        debug: re-raise instead, with the traceback.
        errors: the expected failures (bad input, a failed stage); anything else is a bug and
            keeps its traceback.
    """
    try:
        yield
    except errors as error:
        if debug:
            raise
        typer.echo(f"{command}: error: {error}", err=True)
        raise typer.Exit(1) from None
