"""Data that ships with cnnviz: sample photographs (``samples/``) and a synthetic shapes dataset.

:mod:`cnnviz.data.shapes` generates images with one object of a known class, mask and box: the
ground truth that the explanation methods are measured against. Nothing is imported here, so
``import cnnviz.data`` stays light.
"""
