"""torch's CPU thread count for the length of one run (fit, train_adapter), then the caller's again.

torch.set_num_threads is process-wide: a library call that set it and returned would change the
speed, and the float reduction order (so the result), of whatever the caller runs next in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` torch CPU threads (None or 0: leave torch's setting alone)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
