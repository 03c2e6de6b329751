"""Steps 2 and 3 without Ray: frames prepared and windowed, window batches scored, the naive loop."""
