"""The HTTP endpoints, one blueprint per API: `tfserving` (TF Serving REST), `oip` (Open
Inference Protocol v2), `platform` (the model listing), `admin` (the audit log) and `ops`
(health, readiness, metrics, the OpenAPI document). Guarded views name their action and go
through `serving.pipeline`; `unmatched` answers the paths under the model APIs that name no
endpoint, through the same pipeline.
"""
