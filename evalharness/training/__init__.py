"""Preference-optimization training. Submodules are imported directly; nothing heavy is imported here."""
