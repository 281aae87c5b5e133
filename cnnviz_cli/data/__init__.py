"""Data: datasets, splits, the decoded cache, and the user's own pictures."""
