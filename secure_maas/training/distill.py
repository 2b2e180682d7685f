"""Distillation: a smaller student trained on a teacher's outputs over public inputs only.

The student sees the teacher's predicted probabilities (soft labels) on inputs declared public,
never a private example or label: it is a function of the DP teacher and public data alone,
so post-processing keeps the teacher's guarantee at the same ε (`registry.derive` records it).

The student is one of `training.architectures` (sizes as the training options take them),
built for the teacher's input shape and class count, and must end with the teacher's serving
signature, so it is published as the teacher's next version and clients see no change. Teachers
trained here have it by construction; a teacher with other tensor names is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.errors import SecureMaasError
from secure_maas.keys import Keyring
from secure_maas.registry.container import Array
from secure_maas.registry.derive import (
    DISTILL,
    Derived,
    PublicData,
    open_parent,
    publish_derived,
)
from secure_maas.registry.models import ModelVersion
from secure_maas.registry.signature import ServingSignature
from secure_maas.registry.store import SealedStore

#: Rows per teacher call when labelling the public inputs.
LABEL_BATCH = 256


class DistillRefused(SecureMaasError):
    """The teacher or the student cannot be distilled as asked; the message says why."""


@dataclass(frozen=True)
class Student:
    """A trained student, and what the operator is told about it."""

    model: Any
    signature: ServingSignature
    teacher_params: int | None
    student_params: int
    agreement: float  # share of public inputs where the student's class is the teacher's


def distill(
    teacher: Any,
    signature: ServingSignature,
    inputs: Array,
    *,
    arch: str,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    teacher_params: int | None = None,
    **sizes: Any,
) -> Student:
    """Train `arch` on `teacher`'s (a served model: `predict` by input name) probabilities for
    `inputs`. Raises `DistillRefused` when the teacher is not a one-input classifier whose
    tensor names a student built here has."""
    import tensorflow as tf

    from secure_maas.training.architectures import INPUT_NAME, OUTPUT_NAME, build_model

    if [spec.name for spec in signature.inputs] != [INPUT_NAME] or [
        spec.name for spec in signature.outputs
    ] != [OUTPUT_NAME]:
        raise DistillRefused(
            f"distillation needs a classifier trained here (input {INPUT_NAME!r}, output "
            f"{OUTPUT_NAME!r}); this teacher has inputs {list(signature.input_names)} and "
            f"outputs {list(signature.output_names)}"
        )
    output = signature.outputs[0]
    if len(output.shape) != 2 or output.shape[1] is None or output.shape[1] < 2:
        raise DistillRefused(f"the teacher's output has shape {output.shape}, not (batch, classes)")
    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise DistillRefused("epochs and batch size must be positive, the learning rate > 0")
    shape = signature.inputs[0].shape[1:]
    fixed = [dim for dim in shape if dim is not None]
    if len(fixed) != len(shape):
        raise DistillRefused(f"the teacher's input shape {shape} is not fixed")
    features = np.asarray(inputs, dtype=np.float32)
    soft = np.concatenate(
        [
            teacher.predict({INPUT_NAME: features[i : i + LABEL_BATCH]})[OUTPUT_NAME]
            for i in range(0, len(features), LABEL_BATCH)
        ]
    ).astype(np.float32)
    tf.keras.utils.set_random_seed(seed)
    student = build_model(arch, fixed, int(output.shape[1]), **sizes)
    built = ServingSignature.from_model(student)
    if built != signature:
        raise DistillRefused(
            f"a {arch} student does not take and give what the teacher does: {built.to_dict()}"
        )
    student.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss=tf.keras.losses.KLDivergence(),
    )
    student.fit(features, soft, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    predicted = student.predict(features, batch_size=LABEL_BATCH, verbose=0)
    agreement = float((predicted.argmax(axis=1) == soft.argmax(axis=1)).mean())
    return Student(student, built, teacher_params, int(student.count_params()), agreement)


def distill_version(
    engine: Engine,
    store: SealedStore,
    keyring: Keyring,
    ref: str,
    *,
    inputs: PublicData,
    arch: str,
    epochs: int,
    seed: int,
    created_by: str,
    record: Callable[[Session, ModelVersion, dict[str, Any]], None] | None = None,
) -> tuple[Derived, Student]:
    """Train an `arch` student on the teacher `ref`'s outputs over the public `inputs` and
    publish it as the teacher model's next version (`training.distill`). Returns the published
    version and the `Student`."""
    from secure_maas.registry.codec import encode_model

    parent = open_parent(engine, store, keyring, ref)
    teacher = parent.model
    features = next(iter(inputs.arrays.values()))
    keras = getattr(teacher, "model", None)
    student = distill(
        teacher,
        teacher.signature,
        features,
        arch=arch,
        epochs=epochs,
        seed=seed,
        teacher_params=int(keras.count_params()) if keras is not None else None,
    )
    detail = {
        "transform": DISTILL,
        "student_arch": arch,
        "epochs": epochs,
        "seed": seed,
        "inputs": inputs.record(len(features)),
    }
    derived = publish_derived(
        engine,
        store,
        keyring,
        parent,
        payload=encode_model(student.model),
        signature=student.signature.to_dict(),
        derived_from=detail,
        created_by=created_by,
        record=record,
    )
    return derived, student
