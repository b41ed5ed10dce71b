"""The hotplug cases of block-part, against the xenstored double.

Host tier only: their kernel and xenstore behaviour is the host's too (loop
devices, no device-mapper), and each script run costs about two seconds in
the emulated Xen VM; tests/xen/test_block_part_xl.py takes block-part
through real xl and blkback.
"""
from tests.support.part_cases import *  # noqa: F401,F403
