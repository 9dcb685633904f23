"""Thin cyclopts commands: serve, dirs, projections (more arrive with later issues)."""
