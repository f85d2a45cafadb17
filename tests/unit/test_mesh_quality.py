"""Issue 6's quality bar on synthetic ground truth: known silhouettes → reconstruct → paint →
convert, checked for closedness, silhouette, size, collision, glTF validity and simulation."""

from __future__ import annotations

import pytest

from tests.quality import SHAPES, evaluate


@pytest.fixture(scope="module", params=SHAPES)
def result(request: pytest.FixtureRequest) -> dict:
    return evaluate(request.param, size_m=0.25, budgets=False)  # independent of the load


def test_closed_manifold_and_faithful_to_the_mask(result: dict) -> None:
    assert result["watertight"] and result["edge_manifold"] and result["vertex_manifold"], result
    assert not result["self_intersecting"], result
    assert result["silhouette_iou"] >= 0.9, result
    assert result["faces"] <= 6000


def test_requested_size_and_collision_parts(result: dict) -> None:
    assert result["size_error"] <= 0.01, result
    assert result["parts_convex"] and 1 <= result["collision_parts"] <= 16
    assert result["surface_covered"] >= 0.999, result  # sampled visual surface inside the parts
    if result["shape"] == "L":
        assert result["collision_parts"] >= 2  # a concave object is not one hull


def test_gltf_is_valid_per_khronos_validator(result: dict) -> None:
    assert result["gltf_textured"]["errors"] == 0 and result["gltf_visual"]["errors"] == 0, result


def test_mjcf_falls_and_rests_and_urdf_loads(result: dict) -> None:
    mujoco = result["mujoco"]
    assert mujoco["lowest_contact_z_m"] > -0.005  # on the plane, not through it
    assert 0.0 < mujoco["rest_com_z_m"] < 0.25  # fell from 0.25 m and lies on the floor
    assert mujoco["rest_z_range_last_half_s_m"] < 0.003, mujoco  # no longer falling or bouncing
    assert result["urdf_links"] == 1
