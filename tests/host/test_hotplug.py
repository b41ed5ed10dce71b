"""The hotplug contract of block-file, against the xenstored double.

The same cases run in the Xen VM against the real xenstored (tests/xen).
"""
from tests.support.cases import *  # noqa: F401,F403
