"""Evaluation: frame metrics and normalisations, image/pixel metrics, video and still stores."""
