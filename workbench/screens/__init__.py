"""Screens: each asks the engine for one analysis and draws it with widgets."""
