"""What a launcher such as ``torchrun`` told this process, read from the environment without importing torch.

``pipelines.run`` asks before anything heavy is imported, so a usage error (a wrong config key, a missing folder)
is reported in about a second instead of after torch's import; :mod:`medseg.training.distributed` builds the
process group on top of it.
"""

from __future__ import annotations

import os


def launched_distributed() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with ``WORLD_SIZE > 1``."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False
