"""The VM tier's leak check (tests/support/leak_check.py), run here in an
inner pytest session over a pretend dom0: a set of names that fixtures and
tests add to, and an inventory that lists it and counts how often it is taken."""
import textwrap

pytest_plugins = ["pytester"]

INNER_CONFTEST = """
import pytest
from tests.support import leak_check

DOM0 = set()
TAKEN = []

def pytest_configure(config):
    leak_check.install(config)

def take(domains=None):
    TAKEN.append(1)
    return {"things": set(DOM0)}

@pytest.fixture(autouse=True)
def check(request):
    yield from leak_check.check(request, take, lambda: "(log)", wait_for_quiet=lambda: None)

@pytest.fixture(scope="module")
def volume_group():
    DOM0.add("volume group")
    yield
    DOM0.discard("volume group")
    DOM0.add("archive of the volume group")  # LVM keeps one after vgremove

def pytest_sessionfinish():
    print(f"inventories taken: {len(TAKEN)}")
"""


def run_inner(pytester, *modules):
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(**{f"test_{i}": textwrap.dedent(tests) for i, tests in enumerate(modules)})
    # The inner session imports tests.support from this checkout.
    pytester.syspathinsert(pytester._request.config.rootpath)
    return pytester.runpytest_inprocess("-q", "-s", "-p", "no:cacheprovider")


def test_the_next_test_reuses_an_after_inventory_and_still_sees_what_it_leaves(pytester):
    result = run_inner(pytester, """
        from conftest import DOM0

        def test_clean():
            pass

        def test_also_clean():
            pass

        def test_leaks():
            DOM0.add("loop0")

        def test_after_the_leak():
            pass
    """)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.re_match_lines([r".*ERROR at teardown of test_leaks.*", r".*left behind.*loop0.*"])
    # One before-inventory for the first test, then one after each test.
    result.stdout.fnmatch_lines(["*inventories taken: 5"])


def test_a_fixture_set_up_or_torn_down_between_tests_makes_a_new_before_inventory(pytester):
    result = run_inner(pytester, """
        import pytest

        def test_before_the_volume_group():
            pass

        @pytest.mark.usefixtures("volume_group")
        def test_with_the_volume_group():
            pass

        def test_while_it_is_still_there():
            pass
    """, """
        def test_in_the_next_module():
            pass
    """)
    # What the module fixture makes is not the second test's leftover, nor
    # what its teardown leaves the next module's.
    result.assert_outcomes(passed=4)
    # 2 + 2 + 1 + 2
    result.stdout.fnmatch_lines(["*inventories taken: 7"])
