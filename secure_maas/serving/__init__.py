"""Serving: the HTTP service and the data plane under it.

The HTTP layer: `app.create_app` (the factory; no app exists at import time) wires `services`
(engine, token verifier, access policy, audit writer, model cache, metrics: one set per
process) to the blueprints in `views`, each of which declares its action and goes through
`pipeline`, the one request pipeline (size, token, model, visibility, body, decision, quota,
model call; every outcome audited before the answer). `errors` is the one JSON error handler,
`headers` and `refs` read what a request brings, `readiness`, `metrics` and `openapi` serve
operators, and `gunicorn_app` runs the app under gunicorn, one app per worker.

The data plane is framework-free and is what the views call: `formats` reads and writes the
wire formats (TF Serving REST, Open Inference Protocol v2) against a model's signature,
`cache` resolves a model reference to a loaded model (decrypted in memory only), and
`batcher` merges concurrent requests to one model version into one TensorFlow call.

Importing this package imports neither Flask nor TensorFlow; the modules that need them
import them where they are used.
"""
