"""Training: the loop, and the labelled anomalies some models learn from."""
