"""Evaluation reports of the bundles: segmentation (KiTS19, LiTS) and detection (DeepLesion)."""
