"""Seeded CT phantom datasets in the official layouts of KiTS19, LiTS and DeepLesion, for tests and demos.

``ct`` renders abdominal CT with organ and lesion maps; each dataset module writes it in its layout with
``make_phantoms(out_dir, num_cases=..., seed=0, **size) -> Path`` (the same seed gives byte-identical files).
"""
