"""Test models for xcompile: small trained models, the torchvision zoo, scikit-learn and Keras exports.

Reusable builders live in :mod:`model_zoo.zoo`; the scripts in this folder are thin command lines.
"""
