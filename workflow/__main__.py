"""`python -m workflow ...`: the one command line both engines call."""

import os

# Bitwise-reproducible MKL kernels whatever the thread count: Snakemake runs a decay on the threads it gives the
# job, DVC on every core, and without this their checkpoints differ in the last bits (tests/faults). Read by MKL
# when torch loads, so it is set before anything imports torch.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from workflow.cli import main  # noqa: E402

if __name__ == "__main__":  # megatron's dist_checkpointing spawns workers that re-import __main__
    main()
