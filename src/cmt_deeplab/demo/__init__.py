"""The one-command demo: synthetic data -> training -> PQ -> predictions -> maps -> report."""
