"""Stage 1, inputs: image files decoded to pictures, and pictures preprocessed to model tensors."""
