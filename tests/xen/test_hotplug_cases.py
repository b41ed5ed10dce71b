"""The host tier's hotplug cases, here against the real xenstored and the
installed scripts: this is what keeps the xenstored double honest."""
from tests.support.cases import *  # noqa: F401,F403
