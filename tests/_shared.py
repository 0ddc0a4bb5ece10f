"""Where the shared data lies: ``../shared/data`` beside the project root (the layout on the
development machines and in CI), or ``$HWNAS_SHARED_DATA``. Tests that need it skip when absent."""
from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("HWNAS_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")
NB201_TABLE = SHARED_DATA / "nb201" / "nb201_tables.csv.gz"
CIFAR10_TAR = SHARED_DATA / "cifar10" / "CIFAR-10-images.tar"
