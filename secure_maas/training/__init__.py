"""DP-SGD training: datasets, architectures, fast gradient clipping, accounting, attacks.

Importing this package does not import TensorFlow. `datasets`, `accounting` and `attack` are
NumPy/scikit-learn/dp_accounting only; `architectures`, `clipping`, `train` and `auto` import
TensorFlow at module level and are imported only by code that trains.
"""
