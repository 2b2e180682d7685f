"""The data plane: where models are decrypted, held and run, apart from the HTTP workers.

Under gunicorn an instance runs one model process beside its HTTP workers (`process`): it
alone imports TensorFlow, opens artifacts, holds each model once (on the GPU when there is
one) and batches the requests of every worker together; it also hosts the instance's audit
writer, so all workers' events share its group commits. Workers decide everything (token,
rules, visibility, quota, audit) and send tensors over a Unix socket (`wire`, `client`,
`server`). The development server and tests run the same `LocalDataPlane` in-process (`plane`).
"""
