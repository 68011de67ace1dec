"""Entry points (``tools/train_net.py`` and the others), runnable as scripts and importable as
``lil_meta.tools``."""

if __name__ != "lil_meta.tools":  # one import identity (docs/design.md §2)
    raise ImportError(f"{__name__!r} is the folder of lil_meta.tools: import it as lil_meta.tools")
