"""Hostile and wrong input, every case the host can run (see tests/support/hostile_cases.py)."""
import pytest

from tests.support import hostile_cases
from tests.support.hostile_cases import HOST_CASES


@pytest.mark.parametrize("case", HOST_CASES, ids=[case.id for case in HOST_CASES])
def test_bad_input_fails_with_one_line_naming_it_and_changes_nothing(case, driver, tmp_path):
    with hostile_cases.scene(tmp_path) as where:
        hostile_cases.run(case, driver, where, tmp_path)
