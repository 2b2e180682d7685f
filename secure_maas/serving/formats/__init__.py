"""Wire formats of the prediction APIs, read and written against a `ServingSignature`.

`tfserving` is TF Serving's REST API (row and columnar predict bodies, model status and
metadata); `oip` is the Open Inference Protocol v2 (KServe v2 / Triton HTTP, with Triton's
binary tensor data extension). Both share `tensors`: strict JSON decoding, nested-list to
array conversion and the `BadRequest` error. Nothing here imports Flask or TensorFlow.
"""
