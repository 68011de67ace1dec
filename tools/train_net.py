#!/usr/bin/env python
"""Train (or evaluate) a meta-learner from a config file.

    python tools/train_net.py --config-file configs/maml_5shot.yaml solver.max_iter=3000
    python tools/train_net.py --config-file configs/maml_5shot.yaml --resume      # continue
    python tools/train_net.py --config-file configs/maml_5shot.yaml --eval-only   # test only
    python tools/train_net.py --config-file configs/maml_5shot.yaml --slurm --gpus-per-node 8

The run itself is the engine's (engine/runner.py): build everything that can fail on bad input,
then set up the output folder, train with the standard hooks, test, write ``results.json``.
``--slurm`` / ``--slurm-local`` submit the same run as a job (engine/slurm.py). Bad input ends
with ``error: <message>`` on stderr and exit status 2, a numerical fault with status 3, a lost
or stalled process of a multi-process run with status 4 (docs/cluster.md).
"""

import os
import sys

from lil_meta.engine import runner, slurm
from lil_meta.engine.defaults import default_argument_parser
from lil_meta.engine.errors import ProcessGroupError, UserInputError, exit_with
from lil_meta.engine.interrupt import RunInterrupted
from lil_meta.engine.trainer import NumericalFault


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = default_argument_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    try:
        if args.slurm or args.slurm_local:
            slurm.submit_command_line(args, argv)
        else:
            runner.run(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except NumericalFault as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3
    except ProcessGroupError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(exc.exit_code)  # the broken process group is not torn down: its threads may never return
    except RunInterrupted as exc:
        print(exc, file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:  # before the run began
        print("interrupted at iteration 0; continue with --resume", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    exit_with(main)
