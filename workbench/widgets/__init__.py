"""Widgets: one file each; they draw plain data handed to them and never call the engine."""
