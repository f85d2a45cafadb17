"""meshline as the ML backend of a real Label Studio 1.23.2, driven only through Label Studio's
REST API: projects, imported task images, the backend connection (Label Studio's own check),
predictions read back from Label Studio."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.helpers import ALICE, BOB, LiveApp, bearer, make_scene
from tests.labelstudio.conftest import LS_BIN, LabelStudio, Meshline, browser_session

pytestmark = pytest.mark.serve

WIDTH, HEIGHT = 320, 240


def rectangles_config(prefix: str, classes: range) -> str:
    labels = "".join(f'<Label value="{prefix}{i}"/>' for i in classes)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<RectangleLabels name="label" toName="image">{labels}</RectangleLabels></View>'
    )


SMART_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="brush" toName="image"><Label value="object"/></BrushLabels>'
    '<KeyPointLabels name="click" toName="image" smart="true"><Label value="object"/>'
    "</KeyPointLabels></View>"
)


def new_project(ls: LabelStudio, title: str, config: str, images: int = 2) -> int:
    created = ls.http.post("/api/projects", json={"title": title, "label_config": config})
    assert created.status_code == 201, created.text
    project = int(created.json()["id"])
    files = [
        ("file", (f"scene{i}.png", make_scene(kind, HEIGHT, WIDTH).png(), "image/png"))
        for i, kind in zip(range(images), ("disk", "box", "L"), strict=False)
    ]
    imported = ls.http.post(f"/api/projects/{project}/import", files=files)
    assert imported.status_code == 201, imported.text
    return project


def tasks_of(ls: LabelStudio, project: int) -> list[dict]:
    listed = ls.http.get("/api/tasks", params={"project": project, "fields": "all"})
    assert listed.status_code == 200, listed.text
    return listed.json()["tasks"]


def connect(ls: LabelStudio, project: int, meshline: Meshline, key: str, **extra: object) -> dict:
    """POST /api/ml: Label Studio validates the backend (its /health and /setup) first."""
    created = ls.http.post(
        "/api/ml",
        json={
            "project": project,
            "url": f"{meshline.url}/labelstudio",
            "title": "meshline",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "label-studio",
            "basic_auth_pass": key,
            "is_interactive": True,
            "extra_params": extra.pop("extra_params", None),
            **extra,
        },
    )
    assert created.status_code == 201, created.text
    backend = ls.http.get(f"/api/ml/{created.json()['id']}")
    assert backend.status_code == 200 and backend.json()["state"] == "CO", backend.text
    return backend.json()


def retrieve_predictions(ls: LabelStudio, project: int) -> list[dict]:
    acted = ls.http.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert acted.status_code == 200, acted.text
    listed = ls.http.get("/api/predictions", params={"project": project})
    assert listed.status_code == 200, listed.text
    return listed.json()


def test_backend_refused_without_a_meshline_key(
    label_studio: LabelStudio, meshline: Meshline
) -> None:
    project = new_project(label_studio, "no key", rectangles_config("alpha", range(80)), 1)
    refused = label_studio.http.post(
        "/api/ml",
        json={"project": project, "url": f"{meshline.url}/labelstudio", "title": "meshline"},
    )
    assert refused.status_code == 400 and "authentication" in refused.text, refused.text


def test_rectangles_from_two_projects_two_models(
    label_studio: LabelStudio, meshline: Meshline, live_app: LiveApp
) -> None:
    ls = label_studio
    # Project A names its model in the backend's extra params; project B gets its own by a
    # registry entry named after the project (a file in the models directory: no redeploy).
    a = new_project(ls, "alpha project", rectangles_config("alpha", range(40)))
    b = new_project(ls, "beta project", rectangles_config("beta", range(80)))
    models_dir = Path(live_app.settings["detector_models_dir"])
    shutil.copy(models_dir / "beta.pt", models_dir / f"labelstudio-{b}.pt")
    tuning = {"conf": 0.0001, "max_det": 5}
    backend_a = connect(ls, a, meshline, ALICE, extra_params={"model": "alpha", **tuning})
    backend_b = connect(ls, b, meshline, BOB, extra_params=tuning)
    assert backend_a["model_version"].startswith("meshline-alpha@")
    assert backend_b["model_version"].startswith(f"meshline-labelstudio-{b}@")

    for project, prefix, known in ((a, "alpha", 40), (b, "beta", 80)):
        predictions = retrieve_predictions(ls, project)
        tasks = tasks_of(ls, project)
        assert {p["task"] for p in predictions} == {t["id"] for t in tasks}
        labels = []
        for prediction in predictions:
            assert prediction["model_version"].startswith(
                f"meshline-{'alpha' if project == a else 'labelstudio'}"
            )
            for item in prediction["result"]:
                assert (item["from_name"], item["to_name"], item["type"]) == (
                    "label",
                    "image",
                    "rectanglelabels",
                )
                value = item["value"]
                assert 0 <= value["x"] and value["x"] + value["width"] <= 100 + 1e-6
                assert 0 <= value["y"] and value["y"] + value["height"] <= 100 + 1e-6
                assert (item["original_width"], item["original_height"]) == (WIDTH, HEIGHT)
                assert 0 <= item["score"] <= 1
                labels += value["rectanglelabels"]
        assert labels, f"no boxes for project {project}"
        assert all(label.startswith(prefix) for label in labels)
        assert all(int(label[len(prefix) :]) < known for label in labels)


def test_unknown_classes_are_skipped_and_reported(
    label_studio: LabelStudio, meshline: Meshline
) -> None:
    """Straight to meshline (Label Studio keeps only the results): classes the config has no
    label for are counted, not guessed."""
    project = new_project(label_studio, "report", rectangles_config("alpha", range(1)), 1)
    task = tasks_of(label_studio, project)[0]
    with httpx.Client(base_url=meshline.url, headers=bearer(ALICE), timeout=120) as http:
        setup = http.post(
            "/labelstudio/setup",
            json={
                "project": f"{project}.1",
                "schema": rectangles_config("alpha", range(1)),
                "extra_params": {"model": "alpha", "conf": 0.0001, "max_det": 20},
            },
        )
        assert setup.status_code == 200, setup.text
        answer = http.post(
            "/labelstudio/predict",
            json={
                "tasks": [task],
                "project": f"{project}.1",
                "label_config": rectangles_config("alpha", range(1)),
            },
        )
    assert answer.status_code == 200, answer.text
    one = answer.json()["results"][0]
    shown = [r["value"]["rectanglelabels"][0] for r in one["result"]]
    assert set(shown) <= {"alpha0"}
    assert sum(one["skipped_classes"].values()) + len(shown) == 20
    assert all(name.startswith("alpha") and name != "alpha0" for name in one["skipped_classes"])


def decode_brush(rle: list[int], width: int, height: int) -> np.ndarray:
    """Label Studio's own decoder (label-studio-sdk as Label Studio 1.23.2 ships it, run in
    its virtualenv): the (H, W) mask."""
    script = (
        "import json, sys\n"
        "from label_studio_sdk.converter.brush import decode_rle\n"
        "rle, w, h = json.load(sys.stdin)\n"
        "rgba = decode_rle(rle).reshape(h, w, 4)\n"
        "print(json.dumps((rgba[:, :, 3] > 127).astype(int).tolist()))\n"
    )
    done = subprocess.run(
        [str(LS_BIN / "python"), "-c", script],
        input=json.dumps([rle, width, height]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return np.array(json.loads(done.stdout), dtype=bool)


def test_smart_click_gives_the_brush_of_the_segment_api(
    label_studio: LabelStudio, meshline: Meshline
) -> None:
    ls = label_studio
    project = new_project(ls, "smart tools", SMART_CONFIG, 1)
    backend = connect(ls, project, meshline, ALICE)
    task = tasks_of(ls, project)[0]
    click = {
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "is_positive": True,
        "value": {"x": 50.0, "y": 50.0, "width": 0.5, "keypointlabels": ["object"]},
    }
    masks = []
    for _ in range(2):  # the second click is answered from the cached embedding
        answered = ls.http.post(
            f"/api/ml/{backend['id']}/interactive-annotating",
            json={"task": task["id"], "context": {"result": [click]}},
        )
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert "errors" not in body, body
        (item,) = body["data"]["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == (
            "brush",
            "image",
            "brushlabels",
        )
        assert item["value"]["format"] == "rle" and item["value"]["brushlabels"] == ["object"]
        assert (item["original_width"], item["original_height"]) == (WIDTH, HEIGHT)
        masks.append(decode_brush(item["value"]["rle"], WIDTH, HEIGHT))
    assert np.array_equal(masks[0], masks[1])

    image = make_scene("disk", HEIGHT, WIDTH).png()
    with httpx.Client(base_url=meshline.url, headers=bearer(ALICE), timeout=120) as http:
        direct = http.post(
            "/v1/segment",
            files={"image": ("s.png", image)},
            data={"options": json.dumps({"points": [[WIDTH / 2, HEIGHT / 2]], "labels": [1]})},
        )
    assert direct.status_code == 200, direct.text
    rle = direct.json()["masks"][0]["rle"]
    expected = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert expected.any()
    assert np.array_equal(masks[0], expected.astype(bool))


def test_legacy_token_sent_at_setup_reads_task_files(
    label_studio: LabelStudio, legacy_meshline: Meshline
) -> None:
    """No token configured in meshline: the legacy token Label Studio hands over at /setup
    works once the organisation enables legacy tokens, and not before."""
    ls = label_studio
    project = new_project(ls, "legacy token", rectangles_config("alpha", range(80)), 1)
    extra = {"model": "alpha", "conf": 0.0001, "max_det": 5}
    connect(ls, project, legacy_meshline, ALICE, extra_params=extra)
    assert retrieve_predictions(ls, project) == []  # 401 on the image: nothing stored
    session, headers = browser_session(ls.url)
    enabled = session.post(
        "/api/jwt/settings", headers=headers, json={"legacy_api_tokens_enabled": True}
    )
    assert enabled.status_code in (200, 201), enabled.text
    try:
        predictions = retrieve_predictions(ls, project)
    finally:
        session.post(
            "/api/jwt/settings", headers=headers, json={"legacy_api_tokens_enabled": False}
        )
        session.close()
    assert len(predictions) == 1 and predictions[0]["result"]
    assert all(
        r["value"]["rectanglelabels"][0].startswith("alpha") for r in predictions[0]["result"]
    )
