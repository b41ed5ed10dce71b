"""The rows of the hostile-input table that the real xenstored must see too
(bytes a domU config can put in a node); the LVM rows run in
test_block_lvsnap_xl.py, on its volume group. See tests/support/hostile_cases.py."""
import pytest

from tests.support import hostile_cases

CASES = [case for case in hostile_cases.VM_CASES if not case.needs]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_with_one_line_naming_it_and_changes_nothing(case, driver, tmp_path):
    with hostile_cases.scene(tmp_path) as where:
        hostile_cases.run(case, driver, where, tmp_path)
