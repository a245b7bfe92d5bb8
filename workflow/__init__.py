"""arbor: a declarative pipeline for LLM pretraining studies (see README.md)."""

import os

# Bitwise-reproducible MKL kernels whatever the thread count: Snakemake runs a decay on the threads it gives the
# job, DVC on every core, and without this their checkpoints differ in the last bits (tests/faults). MKL reads it
# when torch loads, so it is set here, before any stage imports torch.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
