"""The model registry: models and versions in the database, sealed artifacts on the store path.

Nothing here imports TensorFlow. `secure_maas.registry.codec` (model <-> bytes) does, and is
imported only by the code that trains or serves models.
"""
