"""Pixels: colour maps and overlays, tile grids, matplotlib figures and HTML pages.

NumPy, PIL, matplotlib and Jinja2 appear only in this stage; it takes maps already post-processed
to [0, 1] (:mod:`cnnviz.methods.postprocess`).
"""
