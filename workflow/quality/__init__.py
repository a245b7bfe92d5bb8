"""Model-based quality filtering: `classifier` trains a fastText scorer, `score` writes per-document scores as
attribute shards beside the curated shards (never rewriting them), `select` turns scores into a data variant
(a keep mask per source) that `tokenize_selected` tokenizes on its own. Scoring is expensive and choosing a
threshold is cheap, so they are separate stages: a new threshold re-runs only `select` and what follows."""
