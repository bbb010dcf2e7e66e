"""Live progress of experiments and sweeps as server-sent events."""
