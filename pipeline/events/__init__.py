"""Anomaly events from calibrated frame scores: detection (:mod:`.detector`), what a run keeps of
them (:mod:`.recorder`: table rows, ``events.jsonl``, snapshots) and webhook delivery (:mod:`.outbox`)."""
