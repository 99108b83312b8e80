"""Progress in a log: whole lines, few of them, with honest estimates; tqdm's bar on a TTY."""

from __future__ import annotations

import io
import itertools
import time

import pytest
import tqdm.std as tqdm_std
from tqdm import tqdm

from rarespecies.core import progress
from rarespecies.core.progress import INTERVAL, STEPS, PhaseHistory, log_bar_class, phase
from rarespecies.core.progress import bar as core_bar


def bar(*args, **kwargs):
    return core_bar(tqdm, *args, **kwargs)


class Pipe(io.StringIO):
    """A stream that is not a terminal, like `dvc repro > log` or a flow reading a stage."""

    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """tqdm's clock, advanced by hand: `now[0] += seconds`."""
    now = [1000.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: now[0])
    return now


def test_a_long_loop_off_a_terminal_writes_a_bounded_number_of_whole_lines(clock):
    stream, items, seconds_each = Pipe(), 100_000, 0.002  # 200 s of work
    for _ in bar(range(items), desc="features train", unit="img", stream=stream):
        clock[0] += seconds_each
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    # start, one line per tenth (they are 20 s apart here), end; never one per item
    assert len(lines) <= 2 + STEPS + 200 / INTERVAL
    assert len(lines) >= 2 + STEPS - 1
    assert lines[0] == "features train: 0/100000 img"
    assert lines[-1].startswith("features train: 100000/100000 img done in 03:")
    assert any("left" in line and "50%" in line for line in lines)


def test_a_loop_without_a_total_prints_a_line_every_interval(clock):
    stream = Pipe()
    shown = bar(desc="stream", unit="img", stream=stream)
    for _ in range(1000):  # 500 s, no total: only the time rule applies
        clock[0] += 0.5
        shown.update()
    shown.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 + int(500 // INTERVAL)
    assert lines[-1].startswith("stream: 1000img [08:20")


def test_a_fast_loop_prints_its_start_and_its_end_only(clock):
    stream = Pipe()
    for _ in bar(range(5000), desc="preprocess 224px", unit="img", stream=stream):
        clock[0] += 0.0001  # tenths 0.05 s apart: closer than MIN_GAP
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("preprocess 224px: 5000/5000 img done")


def test_a_loop_stopped_early_says_how_far_it_got(clock):
    stream = Pipe()
    with bar(desc="timing", total=60, unit="run", stream=stream) as runs:
        for _ in range(12):
            clock[0] += 0.1
            runs.set_postfix_str("95% interval 3.1% wide", refresh=False)
            runs.update()
    assert stream.getvalue().splitlines()[-1].startswith("timing: 12/60 run done in 00:01")
    assert "95% interval 3.1% wide" in stream.getvalue()


def test_a_terminal_gets_tqdms_bar_and_off_gets_nothing(monkeypatch):
    assert not isinstance(bar(range(3), desc="x", stream=Terminal()), log_bar_class(tqdm))
    assert isinstance(bar(range(3), desc="x", stream=Pipe()), log_bar_class(tqdm))
    monkeypatch.setenv(progress.MODE_ENV, "log")
    assert isinstance(bar(range(3), desc="x", stream=Terminal()), log_bar_class(tqdm))
    monkeypatch.setenv(progress.MODE_ENV, "off")
    stream = Pipe()
    assert list(bar(range(3), desc="x", stream=stream)) == [0, 1, 2]
    with phase("convert", stream=stream):
        pass
    assert stream.getvalue() == ""


def test_disabled_shows_nothing():
    stream = Pipe()
    assert list(bar(range(3), desc="x", stream=stream, enabled=False)) == [0, 1, 2]
    with phase("convert", stream=stream, enabled=False):
        pass
    assert stream.getvalue() == ""


def test_an_unknown_mode_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(progress.MODE_ENV, "fancy")
    with pytest.raises(ValueError, match="RARESPECIES_PROGRESS='fancy' is not one of bar, log"):
        bar(range(3), desc="x", stream=Pipe())


def test_lines_name_the_dvc_stage_running_them(monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "features@convnext_base")
    stream = Pipe()
    list(bar(range(3), desc="features train", stream=stream))
    with phase("convert", stream=stream):
        pass
    assert all(line.startswith("features@convnext_base: ")
               for line in stream.getvalue().splitlines())
    assert progress.prefix("features@convnext_base: x") == "features@convnext_base: x"


def _wait_for(stream: io.StringIO, text: str) -> None:
    for _ in itertools.repeat(None, 1000):
        if text in stream.getvalue():
            return
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never written: {stream.getvalue()!r}")


def test_a_phase_announces_itself_beats_while_it_runs_and_prints_its_time(tmp_path):
    stream, history = Pipe(), PhaseHistory(tmp_path / "seconds.json")
    with phase("convert with tf2onnx", key="tf2onnx m", history=history, interval=0.01,
               stream=stream):
        _wait_for(stream, "convert with tf2onnx: 0 s elapsed")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "convert with tf2onnx ..."  # no estimate without a previous run
    assert "left" not in stream.getvalue()
    assert lines[-1].startswith("convert with tf2onnx: done in ")
    assert history.last("tf2onnx m") is not None


def test_the_next_run_of_a_phase_is_estimated_from_the_last_one(tmp_path):
    history = PhaseHistory(tmp_path / "seconds.json")
    history.record("tf2onnx m", 110.0)
    stream = Pipe()
    with phase("convert", key="tf2onnx m", history=history, interval=0.01, stream=stream):
        _wait_for(stream, "s left (the last run took 110 s)")
    assert stream.getvalue().splitlines()[0] == "convert ... (the last run took 110 s)"
    assert progress._estimate(120, 110) == ", longer than the last run (110 s)"
    assert history.last("tf2onnx m") < 110  # replaced by this run's


def test_a_failed_phase_records_nothing_and_does_not_say_done(tmp_path):
    stream, history = Pipe(), PhaseHistory(tmp_path / "seconds.json")
    with pytest.raises(RuntimeError), phase("convert", key="k", history=history,
                                            stream=stream):
        raise RuntimeError("tf2onnx failed")
    assert "done" not in stream.getvalue()
    assert history.last("k") is None


def test_an_unreadable_history_means_no_estimate_not_a_failure(tmp_path):
    (tmp_path / "seconds.json").write_text("{not json")
    history = PhaseHistory(tmp_path / "seconds.json")
    assert history.last("k") is None
    history.record("k", 3.0)
    assert history.last("k") == 3.0
    blocked = PhaseHistory(tmp_path / "seconds.json" / "below-a-file.json")
    blocked.record("k", 3.0)  # cannot be written: ignored
    assert blocked.last("k") is None


def test_history_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.HISTORY_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert PhaseHistory().path == tmp_path / "rarespecies" / "phase_seconds.json"
