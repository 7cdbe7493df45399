"""Fixtures several test files share."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add overhead, and on a busy 2-core machine OpenMP spin-waiting
    made such files several times slower (spawned DDP ranks run one thread each, too). Restored after each
    test. A file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
