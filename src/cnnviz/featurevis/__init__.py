"""Feature visualisation: what a unit wants to see (optimised images, dataset exemplars, checks)."""
