"""Entry points (``tools/train_net.py`` and the others), runnable as scripts and importable as
``lil_meta.tools``."""
