"""Search algorithms behind one ask/tell interface (see :mod:`search.algorithms.base`)."""
from search.algorithms.base import Algorithm, Evaluated, Trial, get_algorithm, list_algorithms, register_algorithm

__all__ = ["Algorithm", "Evaluated", "Trial", "get_algorithm", "list_algorithms", "register_algorithm"]
