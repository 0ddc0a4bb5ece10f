"""Search spaces (see :mod:`search.spaces.base`)."""
from search.spaces.base import (
    SPACES,
    Genome,
    SearchSpace,
    TaskSpec,
    TrainHParams,
    get_space,
    list_spaces,
    register_space,
)

__all__ = ["SPACES", "Genome", "SearchSpace", "TaskSpec", "TrainHParams", "get_space", "list_spaces", "register_space"]
