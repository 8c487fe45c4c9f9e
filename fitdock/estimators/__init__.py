"""Estimators: validate Azure-ML-style arguments and build a JobSpec. No I/O beyond reading
the user's own dependency files."""
