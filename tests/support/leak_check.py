"""The VM tier's leak check (tests/xen/conftest.py): an inventory of dom0
before and after every test, and anything new fails the test.

An inventory costs about 2 s under emulation (`lvs` and `xl list` are most
of it). A test's before-inventory is the previous test's after-inventory
whenever nothing ran between the two: no fixture wider than one test was set
up or torn down meanwhile (a module's volume group, say). Then it is reused.
Only fixtures run between tests, and those wider than a test are the only
ones that run outside the leak check's own bracket: function-scoped ones are
set up after it (pytest sets autouse fixtures up first within a scope) and
torn down before it.
"""
from tests.support import inventory


class LastInventory:
    """A pytest plugin: the last after-inventory, while it still describes dom0."""

    def __init__(self):
        self.value = None

    def pytest_fixture_setup(self, fixturedef):
        if fixturedef.scope != "function":
            self.value = None

    def pytest_fixture_post_finalizer(self, fixturedef):
        if fixturedef.scope != "function":
            self.value = None


def install(config):
    """Call from pytest_configure; the plugin is what `check` reads."""
    config.pluginmanager.register(LastInventory(), "xenblock-last-inventory")


def check(request, take, explain, wait_for_quiet=inventory.wait_for_quiet):
    """A generator fixture's body. take(domains=None) takes an inventory;
    explain() says more when something is left (the scripts' log)."""
    last = request.config.pluginmanager.get_plugin("xenblock-last-inventory")
    before = last.value if last.value is not None else take()
    last.value = None  # the test runs now: only a complete after-inventory is kept
    yield
    domains = wait_for_quiet()
    after = take(domains)
    last.value = after
    leaked = inventory.difference(before, after)
    assert not leaked, f"left behind: {leaked}\n{explain()}"
