"""The engine: model bundle, preprocessing, inference, saliency, skin tone, audit metrics, records.

Depends on numpy, Pillow and onnxruntime only (enforced by import-linter contracts).
"""
