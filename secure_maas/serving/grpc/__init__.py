"""gRPC for both APIs: Triton's `inference.GRPCInferenceService` and TF Serving's
`tensorflow.serving.PredictionService`, through the same pipeline as HTTP (`serving.pipeline`).

`schema` compiles the vendored protos (`protos/`) into a private descriptor pool; `calls` is
the gRPC side of the pipeline (the inbound request, status codes, audit before answering);
`triton` and `tfserving` are the methods; `server` runs them. grpc is imported by those
modules only, never at `secure_maas.serving` import: a process that does not serve gRPC (the
gunicorn master, the model process) never loads it.
"""
