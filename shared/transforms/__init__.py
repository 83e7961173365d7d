"""Transforms MONAI does not have: 2.5D slice bags, instance targets from label maps, DeepLesion slice interpolation."""
