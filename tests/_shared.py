"""Where the shared data lies: ``../shared/data`` beside the project root (the layout on the
development machines and in CI), or ``$HWNAS_SHARED_DATA``. Tests that need it skip when absent."""
from __future__ import annotations

from search.config import shared_data_dir

SHARED_DATA = shared_data_dir()
NB201_TABLE = SHARED_DATA / "nb201" / "nb201_tables.csv.gz"
CIFAR10_TAR = SHARED_DATA / "cifar10" / "CIFAR-10-images.tar"
