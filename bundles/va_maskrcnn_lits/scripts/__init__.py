"""Helpers of the va_maskrcnn_lits bundle configs (MONAI model-zoo convention: ``scripts.<module>``)."""
