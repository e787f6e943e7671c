"""The formats and units every part of Hangar shares (names, digests, manifests, media types,
error codes, auth wire formats, Modelfile, options, durations and sizes, GGUF headers, Go
templates, thinking): the standard library and declared dependencies only, never another part
of Hangar (tests/test_structure.py)."""
