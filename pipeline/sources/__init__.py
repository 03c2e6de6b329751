"""Step 1 of a frame's path: what a spec names (resolve), and the sources that yield frames."""
