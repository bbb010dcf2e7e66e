"""GET /compare: several experiments side by side."""
