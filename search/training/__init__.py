"""Training and data."""
