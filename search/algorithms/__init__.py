"""Search algorithms behind one ask/tell interface (see :mod:`search.algorithms.base`)."""
from search.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmOptions,
    Evaluated,
    Trial,
    create_algorithm,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmOptions", "Evaluated", "Trial", "create_algorithm", "get_algorithm",
           "list_algorithms", "register_algorithm"]
