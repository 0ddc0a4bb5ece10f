"""The search loop: the runner, the candidate tracker, the run set-up and the run store."""
