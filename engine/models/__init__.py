"""Network definitions (Wav2Lip, S3FD), each with the helpers that load and validate its checkpoint beside it."""
