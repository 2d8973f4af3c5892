"""Whole jobs composed from the stages: explain a folder, build the report, evaluate, sanity."""
