"""The measuring fleet: the agent pool (leases, retries, quarantine) and the agent registry service."""
