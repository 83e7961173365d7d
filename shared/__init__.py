"""Code shared by the CT attention bundles: networks, data layouts, transforms, engines and metrics."""

__version__ = "0.1.0"
