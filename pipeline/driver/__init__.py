"""The Ray side's driver: starts actors, moves object references between them, reports the run."""
