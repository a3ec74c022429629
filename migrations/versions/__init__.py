"""Migration scripts, oldest first by their revision chain."""
