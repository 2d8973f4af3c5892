"""Can this map be trusted? Metrics for explanation maps, for any method in the registry.

* :mod:`cnnviz.metrics.faithfulness` — deletion / insertion (RISE), Average Drop and Increase in
  Confidence (Grad-CAM++), ROAD with noisy linear imputation;
* :mod:`cnnviz.metrics.localisation` — pointing game and energy-based pointing game against
  ground-truth boxes or masks, and the ground-truth file format;
* :mod:`cnnviz.metrics.sanity` — model-parameter and data randomisation (Adebayo et al. 2018).

The submodules are imported on use; SciPy and scikit-image are imported inside the functions
that need them, so ``import cnnviz.metrics`` stays light.
"""

from __future__ import annotations
