"""Typed errors: their text is the one hotplug-error line a person reads."""


class HotplugError(Exception):
    """A failure the administrator can act on: what, which path, why."""


class CommandError(HotplugError):
    """An external tool failed; carries what is needed to understand why."""

    def __init__(self, argv, returncode, stderr):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        last = self.stderr.splitlines()[-1] if self.stderr else "no message"
        super().__init__(f"{self.argv[0]} failed (exit {returncode}): {last}")
