"""Stage 2, capture: layers named and resolved, forward hooks owned and removed, targets scored."""
