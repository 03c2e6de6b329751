"""The live view: per-stream state kept by the writer (state.py) and the web page serving it (server.py)."""
