"""Search spaces (see :mod:`search.spaces.base`)."""
from search.spaces.base import (
    Genome,
    SearchSpace,
    TaskSpec,
    TrainHParams,
    get_space,
    list_spaces,
    register_space,
)

__all__ = ["Genome", "SearchSpace", "TaskSpec", "TrainHParams", "get_space", "list_spaces", "register_space"]
