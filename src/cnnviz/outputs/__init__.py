"""Written results: atomic files, the versioned manifest, and the completion records of a run."""
