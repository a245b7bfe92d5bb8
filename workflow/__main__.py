"""`python -m workflow ...`: the one command line both engines call."""

from workflow.cli import main

if __name__ == "__main__":  # megatron's dist_checkpointing spawns workers that re-import __main__
    main()
