"""Looking at the model itself: parameter and shape summary, filters, activations."""
