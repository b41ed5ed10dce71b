"""Fixtures both tiers share: image files and the leak check around each case."""
import os

import pytest

from xenblock import loop


@pytest.fixture
def images(tmp_path):
    """images(name, head=b"", mode=0o644, size=4 MiB) -> path of a new image file."""
    made = []

    def make(name, head=b"", mode=0o644, size=4 << 20):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
            f.write(head)
        os.chmod(path, mode)
        made.append(str(path))
        return str(path)

    yield make
    leaked = {path: [node for node, _, _ in loop.backed_by(os.stat(path))] for path in made}
    assert not any(leaked.values()), f"loop devices left behind: {leaked}"
