"""Face detection and tracking, shared by lip-sync and portrait animation."""

DETECTORS = ("haar", "s3fd")
