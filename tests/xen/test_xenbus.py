"""xenstore without xenstored's socket: the kernel's xenbus device, as a
driver domain (or a dom0 whose xenstored runs elsewhere) has it."""
from tests.support.cases import loops_of

# In a mount namespace of the script's own, empty directories cover the
# socket's: only /dev/xen/xenbus is left to reach xenstore through.
WITHOUT_SOCKET = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  'for d in /run/xenstored /var/run/xenstored; do [ -d "$d" ] && mount -t tmpfs none "$d"; done; '
                  '[ ! -e /run/xenstored/socket ] && [ ! -e /var/run/xenstored/socket ] && exec "$@"',
                  "without-socket"]


def test_without_the_socket_a_script_talks_over_xenbus(driver, images):
    path = images("xenbus.img")
    key = driver.backend(path)
    result = driver.add(key, wrapper=WITHOUT_SOCKET)
    assert result.returncode == 0, result.stderr
    assert driver.read(f"{key}/hotplug-status") == "connected"
    assert loops_of(path) == [driver.read(f"{key}/physical-device-path")]
    assert driver.remove(key, wrapper=WITHOUT_SOCKET).returncode == 0
    assert loops_of(path) == []
