"""Training: per-iteration margin and learning-rate schedules."""
