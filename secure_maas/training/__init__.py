"""DP-SGD training: datasets and budgets, the ledger, architectures, fast clipping,
accounting, membership-inference checks.

Importing this package does not import TensorFlow, and neither do `catalog`, `datasets`,
`dpstats`, `events`, `models`, `attack`, `accounting`, `auto` and `ledger` (the last three
import dp_accounting). `architectures`, `clipping`, `train`, `pipeline` (a whole run) and
`membership` (it loads a published model) import TensorFlow at module level and are
imported only by code that trains or checks a model.
"""
