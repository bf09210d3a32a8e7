"""Tasks: scene kinds that turn a system into a Problem (objective + parameters)."""
