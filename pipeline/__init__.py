"""sim2real: synthetic-to-real domain adaptation of vision models as a reproducible DVC pipeline."""
