"""Explanations of a trained model: attribution maps for images, feature importance for tables."""
