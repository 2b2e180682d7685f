"""Where model processes run and which one holds a model: decided without TensorFlow, from
`CUDA_VISIBLE_DEVICES` or the driver's list of GPUs, the same in every worker and every start."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from secure_maas.dataplane.devices import Placement, plan, route, visible_accelerators


def gpus(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "gpus"
    folder.mkdir()
    for i in range(count):
        (folder / f"0000:0{i}:00.0").mkdir()
    return folder


@pytest.mark.parametrize(
    ("visible", "found"),
    [
        ("0,1", ["0", "1"]),
        (" 2 , 3 ", ["2", "3"]),
        ("GPU-8f2a,GPU-77c1", ["GPU-8f2a", "GPU-77c1"]),
        ("", []),
        ("-1", []),
        ("0,-1,1", ["0"]),  # CUDA stops at the first invalid entry
        ("1,,2", ["1"]),
    ],
)
def test_cuda_visible_devices_is_obeyed_as_cuda_reads_it(
    tmp_path: Path, visible: str, found: list[str]
) -> None:
    assert visible_accelerators({"CUDA_VISIBLE_DEVICES": visible}, gpus(tmp_path, 4)) == found


def test_without_the_variable_every_gpu_the_driver_lists(tmp_path: Path) -> None:
    assert visible_accelerators({}, gpus(tmp_path, 3)) == ["0", "1", "2"]
    assert visible_accelerators({}, tmp_path / "no-driver") == []


def test_one_process_per_accelerator_or_one_on_the_cpu() -> None:
    assert plan(0, ["0", "1"]) == [Placement(0, "0"), Placement(1, "1")]
    assert plan(0, []) == [Placement(0, None)]
    assert plan(3, ["0", "1"]) == [Placement(0, "0"), Placement(1, "1"), Placement(2, "0")]
    assert plan(2, []) == [Placement(0, None), Placement(1, None)]
    assert plan(1, ["5", "6"]) == [Placement(0, "5")]
    assert Placement(1, "1").describe() == "GPU 1" and Placement(0, None).describe() == "the CPU"
    with pytest.raises(ValueError, match="negative"):
        plan(-1, [])


def test_a_model_has_one_home_spread_by_name() -> None:
    names = [f"model-{i}" for i in range(400)]
    homes = [route(name, 4) for name in names]
    assert homes == [route(name, 4) for name in names]  # a digest: stable across processes
    assert all(0 <= home < 4 for home in homes)
    assert min(Counter(homes).values()) > 60  # every process gets a fair share
    assert {route(name, 1) for name in names} == {0}
    assert route("digits", 3) == 1 and route("multi", 3) == 0  # pinned: workers and master agree
    with pytest.raises(ValueError, match="at least one"):
        route("digits", 0)
