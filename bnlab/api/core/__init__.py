"""The HTTP plumbing every feature shares: errors, auth, limits, idempotency, metrics, the
broker, health and the dashboard's files."""
