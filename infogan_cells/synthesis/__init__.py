"""Bulk synthesis: generation by seed, writers by format, validation."""
