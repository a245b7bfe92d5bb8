"""The two engines' views of the stage table: `snakemake` (input/params functions for rules/common.smk, and `why`)
and `dvc` (dvc.yaml and the resolved params it tracks). Stage code never imports this package."""
