"""A stage's output in a flow's log: its own lines at INFO, TensorFlow's and DVC's chatter at
DEBUG."""

from __future__ import annotations

import logging

import pytest

from rarespecies.ops.pipeline import stage_line_logger

STAGE_OUTPUT = [
    "Running stage 'export':",
    "> python -m stages.export",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796066186.348531   11019 port.cc:153] oneDNN custom operations are on.",
    "To enable the following instructions: AVX2 AVX512F, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "W0000 00:00:1796066186.348531   11019 loader.cc:10] a real warning",
    "export: convert head_graph (0.1M parameters) with tf2onnx ...",
    "export: parity: onnxruntime on 55 test images: 55/55 img done in 00:03, 16.1img/s",
    "Updating lock file 'dvc.lock'",
    "To track the changes with git, run:",
    "\tgit add dvc.lock",
]


def test_the_stage_lines_are_info_and_the_noise_debug(caplog: pytest.LogCaptureFixture):
    logger = logging.getLogger("test-stage")
    with caplog.at_level(logging.DEBUG, logger="test-stage"):
        log = stage_line_logger(logger)
        for line in STAGE_OUTPUT:
            log(line.rstrip())  # as `dvc(on_line=...)` passes it: leading tabs kept
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == ["Running stage 'export':", "> python -m stages.export",
                    "W0000 00:00:1796066186.348531   11019 loader.cc:10] a real warning",
                    STAGE_OUTPUT[6], STAGE_OUTPUT[7]]
    assert len(caplog.records) == len(STAGE_OUTPUT)  # nothing dropped, only demoted
