"""Settings for the whole suite.

One intra-op thread, here and in the runs the tests start (they inherit ``OMP_NUM_THREADS``).
The tests' tensors are tiny, so a second thread gains nothing, and on a busy 2-core machine it
costs a great deal: each parallel region waits for a thread that has no core (one tiny fp64
training took 153 s with two threads against 17 s with one, under the same load). Tests that
need another count set it themselves.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the variable, which torch reads when it starts)

import lil_meta.datasets  # noqa: E402,F401  (the built-in components register, as the entry points do)
import lil_meta.models  # noqa: E402,F401

torch.set_num_threads(1)
