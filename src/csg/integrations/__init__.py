"""Bridges to other tools: :mod:`csg.integrations.lightning` (CSG inside your own LightningModule).

Each module imports its optional package only when used (``pip install "csg[lightning]"``).
"""
