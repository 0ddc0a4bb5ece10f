"""The measurement core, free of gRPC: the service (uploads, jobs, results), job queue, build and
measure steps, content cache, model validation, statistics, results and provenance."""
