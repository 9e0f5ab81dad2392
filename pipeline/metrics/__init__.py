"""Metrics: classification quality and the domain gap between feature sets."""
