"""Data on disk: image decoding, the manifest contract, the built-in digits scenario and prepare."""
