"""The model registry: models and versions in the database, sealed artifacts on the store path.

Nothing here imports TensorFlow except `codec` (model <-> bytes) and `keras_import` (a Keras
file made elsewhere), which the code that trains, imports or serves models imports when it
needs them.
"""
