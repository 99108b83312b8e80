"""Progress that reads well in a terminal and in a log: bars, phases and their estimates.

In a terminal (stderr a TTY) a bar is tqdm's own, redrawn in place. Anywhere else (`dvc repro`
piped to a file, CI, a Prefect flow reading a stage's output) tqdm's carriage-return redraws
would pile up into one huge line, so a bar prints whole lines instead: one when it starts,
one each time it passes another tenth of its total (at least `MIN_GAP` seconds after the
previous line) or `INTERVAL` seconds after the previous line, and one when it ends. A loop of
any length then writes at most 12 lines plus one per `INTERVAL` seconds.

A phase (`phase`) is a step without a count, such as a tf2onnx conversion: it prints a line
when it starts, a line every `INTERVAL` seconds while it runs, and its duration when it ends.
Its estimate is honest or absent: the duration of the same phase the last time it ran on
this machine (`PhaseHistory`, kept in the user's cache, never in a DVC output), else only
the elapsed time.

`RARESPECIES_PROGRESS` overrides the choice: `bar` (tqdm's bar), `log` (whole lines) or
`off` (nothing). Lines start with the DVC stage running them (`DVC_STAGE`, which DVC sets).

tqdm belongs to the pipeline extra and core to the base install (`rarespecies predict` runs
without it), so a caller passes its `tqdm` class to `bar`; this module imports none.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Any

MODE_ENV = "RARESPECIES_PROGRESS"
MODES = ("bar", "log", "off")
INTERVAL = 30.0  # seconds: the longest silence of a bar or phase in a log
MIN_GAP = 5.0  # seconds: tenths of a fast loop closer together than this are not printed
STEPS = 10  # a log line per tenth of a bar's total
HISTORY_ENV = "RARESPECIES_PHASE_HISTORY"


def mode(stream: IO[str] | None = None) -> str:
    """How progress shows: `RARESPECIES_PROGRESS` if set, else `bar` on a TTY and `log` off it.

    Args:
        stream: where progress goes (stderr by default).

    Returns:
        `bar`, `log` or `off`.

    Raises:
        ValueError: `RARESPECIES_PROGRESS` holds another value, naming the accepted ones.
    """
    chosen = os.environ.get(MODE_ENV, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"{MODE_ENV}={chosen!r} is not one of {', '.join(MODES)}: "
                             "unset it or pick one")
        return chosen
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "log"


def prefix(label: str) -> str:
    """`label` after the running DVC stage's name, when DVC runs it and `label` lacks it."""
    stage = os.environ.get("DVC_STAGE", "")
    if not stage or label.startswith(stage):
        return label
    return f"{stage}: {label}"


@cache
def log_bar_class(base: type) -> type:
    """`base` (tqdm's class) made to print whole lines, few of them: what a log can show.

    tqdm reports every change of state (`mininterval=0`); `display` decides whether it is
    worth a line: the first state, a new tenth of the total at least `min_gap` seconds after
    the last line, `interval` seconds of silence, and the end (`close`). tqdm's clock
    (`self._time`) is used throughout, so elapsed time, rate and line spacing agree.

    Args:
        base: `tqdm.tqdm` (or a subclass).

    Returns:
        The subclass, `LogBar` (one per base).
    """
    class LogBar(base):  # type: ignore[valid-type,misc]
        """A tqdm bar printing a few whole lines (see `log_bar_class`)."""

        def __init__(self, *args: Any, interval: float = INTERVAL, min_gap: float = MIN_GAP,
                     **kwargs: Any) -> None:
            self._interval, self._min_gap = interval, min_gap
            self._printed_at: float | None = None
            self._printed_step = -1
            self._closing = False
            kwargs.update(mininterval=0, miniters=1, maxinterval=0, leave=True, ascii=True)
            super().__init__(*args, **kwargs)

        def _step(self) -> int:
            return int(STEPS * self.n / self.total) if self.total else 0

        def _due(self, now: float) -> bool:
            if self._closing or self._printed_at is None:
                return True
            if self.total and self.n >= self.total:
                return False  # the end is printed once, by close, with the final time
            gap = now - self._printed_at
            if gap >= self._interval:
                return True
            new_tenth = bool(self.total) and self._step() > self._printed_step
            return new_tenth and gap >= self._min_gap

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            """Print the bar's state as one line when it is due (see the class)."""
            if msg is not None:  # tqdm clearing what it drew in place: nothing was
                return False
            now = self._time()
            if not self._due(now):
                return False
            first = self._printed_at is None
            self._printed_at, self._printed_step = now, self._step()
            line = str(self)
            if self.total and (first or self._closing):  # not "? left", nor "00:00 left"
                ends = _START_FORMAT if first else _END_FORMAT
                line = self.format_meter(**(self.format_dict | {"bar_format": ends}))
            line = " ".join(line.split())  # tqdm pads numbers ("  2.14img/s") for a bar
            # At close tqdm writes the newline itself, right after this last display.
            self.fp.write(line + ("" if self._closing else "\n"))
            self.fp.flush()
            return True

        def close(self) -> None:
            """Print the last line, with the whole loop's time and mean rate."""
            self._closing = True
            super().close()

    return LogBar


_START_FORMAT = "{desc}: 0/{total_fmt} {unit}"
_END_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} done in {elapsed}, {rate_fmt}{postfix}"


def _log_format(total: float | None) -> str | None:
    """Readable without a bar: `desc: 40/100 img (40%), 00:12 elapsed, 00:18 left, 3.1 img/s`."""
    if not total:
        return None  # tqdm's own: count, elapsed and rate
    return ("{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, "
            "{remaining} left, {rate_fmt}{postfix}")


def bar(tqdm: type, iterable: Iterable | None = None, *, desc: str,
        total: float | None = None, unit: str = "it", enabled: bool = True,
        stream: IO[str] | None = None, **kwargs: Any) -> Any:
    """A progress bar for a loop: tqdm's in a terminal, a few whole lines in a log.

    Args:
        tqdm: the `tqdm.tqdm` class (the caller's import: see the module's docstring).
        iterable: what to iterate over (or None and call `update`).
        desc: what the loop does, e.g. `features train`; prefixed with the DVC stage.
        total: the count of items, when `iterable` has no length.
        unit: what an item is (`img`, `batch`, `run`).
        enabled: False shows nothing (a caller's `progress=False`).
        stream: where to write (stderr by default).
        kwargs: more tqdm options (e.g. `smoothing`).

    Returns:
        A tqdm instance: iterate over it, or `update` it; close it (or use `with`).
    """
    stream = sys.stderr if stream is None else stream
    chosen = mode(stream) if enabled else "off"
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    common = dict(desc=prefix(desc), total=total, unit=unit, file=stream, **kwargs)
    if chosen == "log":
        return log_bar_class(tqdm)(iterable, bar_format=_log_format(total), **common)
    return tqdm(iterable, disable=chosen == "off", **common)


def say(message: str, stream: IO[str] | None = None) -> None:
    """Print one progress line (with the DVC stage's name), unless progress is `off`."""
    stream = sys.stderr if stream is None else stream
    if mode(stream) != "off":
        stream.write(prefix(message) + "\n")
        stream.flush()


def default_history_file() -> Path:
    """Where phase durations are kept: `RARESPECIES_PHASE_HISTORY`, else the user's cache
    (`$XDG_CACHE_HOME/rarespecies/phase_seconds.json`); durations belong to a machine, not to
    a result, so never to a DVC output."""
    if os.environ.get(HISTORY_ENV):
        return Path(os.environ[HISTORY_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rarespecies" / "phase_seconds.json"


class PhaseHistory:
    """The last duration of each phase on this machine, by key (e.g. the backbone converted).

    Best effort: a missing, unreadable or unwritable file means no estimate, never a failure.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = default_history_file() if path is None else Path(path)

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()
                if isinstance(v, (int, float))} if isinstance(data, dict) else {}

    def last(self, key: str) -> float | None:
        """Seconds the phase `key` took the last time it finished here, or None."""
        return self._read().get(key)

    def record(self, key: str, seconds: float) -> None:
        """Remember that phase `key` took `seconds` (written atomically; errors ignored)."""
        data = self._read() | {key: round(seconds, 1)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass


def _estimate(elapsed: float, last: float | None) -> str:
    """What the last run's duration says about the rest: `, about N s left (...)`, or that
    this run is already longer; nothing without a last run."""
    if last is None:
        return ""
    if elapsed <= last:
        return f", about {last - elapsed:.0f} s left (the last run took {last:.0f} s)"
    return f", longer than the last run ({last:.0f} s)"


@contextmanager
def phase(what: str, *, key: str | None = None, history: PhaseHistory | None = None,
          interval: float = INTERVAL, stream: IO[str] | None = None,
          enabled: bool = True) -> Iterator[None]:
    """Announce a step, keep saying it runs every `interval` seconds, then print its time.

    Args:
        what: the step, e.g. `convert the backbone with tf2onnx`.
        key: remember this phase's duration under this key (what determines it, e.g. the
            model, its input shape and parameter count) and estimate the next run from it;
            None: elapsed time only.
        history: where durations are kept (the user's cache by default).
        interval: seconds between the lines saying the phase still runs.
        stream: where to write (stderr by default).
        enabled: False shows nothing (a caller's `progress=False`).

    Yields:
        Nothing; the phase is the block. A failed block prints nothing more and records
        nothing (the error says what happened).
    """
    stream = sys.stderr if stream is None else stream
    if not enabled or mode(stream) == "off":
        yield
        return
    history = (history or PhaseHistory()) if key else None
    last = history.last(key) if history and key else None
    start = time.perf_counter()
    # A phase of under a second has nothing to estimate.
    hint = f" (the last run took {last:.0f} s)" if last is not None and last >= 1 else ""
    say(f"{what} ...{hint}", stream)
    done = threading.Event()

    def heartbeat() -> None:
        # A daemon thread: a conversion holds the main thread for minutes without a count.
        while not done.wait(interval):
            elapsed = time.perf_counter() - start
            say(f"{what}: {elapsed:.0f} s elapsed{_estimate(elapsed, last)}", stream)

    beat = threading.Thread(target=heartbeat, name="progress-heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        done.set()
        beat.join()
    seconds = time.perf_counter() - start
    say(f"{what}: done in {seconds:.1f} s", stream)
    if history and key:
        history.record(key, seconds)
