"""DP-SGD training: datasets and budgets, the ledger, architectures, fast clipping,
accounting, membership-inference checks.

Importing this package does not import TensorFlow, and neither do `dataset_catalog`,
`datasets`, `dpstats`, `events`, `models`, `options`, `attack`, `accounting`, `auto`, `ledger`
and `plan` (the last four import dp_accounting; `plan` is the one validator of a run).
`architectures`, `clipping`, `train`, `pipeline` (a whole run) and `membership` (it loads a
published model) import TensorFlow at module level and are imported only by code that trains
or checks a model.
"""
