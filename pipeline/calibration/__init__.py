"""Calibrated causal scores (:mod:`.scores`) and fitting them on normal footage (:mod:`.fit`)."""
