"""The torch half of amc-data: AMC and its baselines, their training, scoring and evaluation.

Read in pipeline order: `config` (the options of a run; no torch, so the CLI can check them
before torch loads), `batch` (the tensors a model eats), `data` (prepared folder -> batches),
`model` (AMC and the baselines; `cca` and `word_vectors` beside it), `loss`, `distributed`
(torchrun), `checkpoint` with `migrations` (older checkpoints brought up to today's format),
`resume` (what a resumed run may change) and `run_folder` (whose folder it is), `training` (the
loop), `scoring` (a model over a split), `runs` and
`plots` (evaluation of trained runs), `demo`. Importing this package loads no torch; its
modules do.
"""
