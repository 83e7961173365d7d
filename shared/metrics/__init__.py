"""Challenge metrics, computed exactly as the challenges score: LiTS, KiTS19 and DeepLesion (FROC).

Layers, each importing only the ones below: the dataset facts (``shared.data.<dataset>``); the plain functions on
arrays and files (``dice``, ``label_volumes``, ``table``, and per dataset ``kits19``, ``lits``, ``deeplesion`` with
``evaluate_dir(pred_dir, ref_dir, ...) -> MetricTable`` used by ``python -m shared evaluate`` and the bundle
reports); the MONAI/ignite metrics for evaluators (``dice_metric``, ``froc_metric``), which import MONAI or ignite.
"""
