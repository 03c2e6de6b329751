"""Ground truth on disk, no frames: still-dataset layouts and specs, label and mask files, video labels."""
