"""Zoo tests run single-threaded: on a shared 2-core box, intra-op threads contend and slow CPU
convolutions by orders of magnitude."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
