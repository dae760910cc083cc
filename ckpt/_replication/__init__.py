"""Replication: a local tier copied to a second directory in the background."""
