"""The OpenVINO runner's checks (tests/openvino_runtime_checks.py), in their own interpreter like
tests/test_openvino.py's, and in their own test file so that the suite's two workers can run both at once."""
from __future__ import annotations

from tests.test_openvino import run_checks_in_own_interpreter


def test_openvino_runtime_checks_pass_in_their_own_interpreter() -> None:
    """tests/openvino_runtime_checks.py: static-batch int8, --bf16's fp32 nodes, throughput mode."""
    run_checks_in_own_interpreter('openvino_runtime_checks.py')
