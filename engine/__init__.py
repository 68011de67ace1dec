"""The engine: configs, the trainer, the inner loop, checkpoints, evaluation and launch."""

if __name__ != "lil_meta.engine":  # one import identity (docs/design.md §2)
    raise ImportError(f"{__name__!r} is the folder of lil_meta.engine: import it as lil_meta.engine")
