"""The thin command line every stage shares: one readable error line, a closing summary."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable


def stage_main(name: str, work: Callable[..., str], *, per: str | None = None) -> None:
    """Parse the stage's arguments, run `work` and print its summary.

    Errors print as one line (`<stage>: error: ...`) and exit with status 1; `--debug` shows
    the traceback instead.

    Args:
        name: stage name, for messages.
        work: does the stage's work and returns a one-line summary; takes the name given on
            the command line when `per` is set.
        per: the stage runs per "model" or per "backbone" (a key of `models` or `backbones`
            in params.yaml), named on the command line.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    if per:
        parser.add_argument("name", metavar=per, help=f"a key of `{per}s` in params.yaml")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args()
    args.debug = args.debug or bool(os.environ.get("RARESPECIES_DEBUG"))
    label = f"{name}@{args.name}" if per else name
    start = time.perf_counter()
    try:
        summary = work(args.name) if per else work()
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if args.debug:
            raise
        print(f"{label}: error: {error}  (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    print(f"{label}: {summary} [{time.perf_counter() - start:.1f} s]")
