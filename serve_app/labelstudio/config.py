"""Label Studio labelling configs: which control tags meshline can fill, on which object tag.

A config is XML (``<View><Image name="image" value="$image"/><RectangleLabels name="label"
toName="image"><Label value="car"/></RectangleLabels></View>``). Parsed with defusedxml (a config
arrives from whoever holds a key) and bounded in size and tags before parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from serve_app.http.errors import ApiError

MAX_CONFIG_CHARS = 256 * 1024
MAX_CONFIG_TAGS = 5000
MAX_LABELS_PER_CONTROL = 1000

# Control tag (lower case) → the result type meshline produces for it.
IMAGE_CONTROLS = {
    "rectanglelabels": "rectanglelabels",
    "polygonlabels": "polygonlabels",
    "brushlabels": "brushlabels",
    "keypointlabels": "keypointlabels",
}
VIDEO_CONTROLS = {"videorectangle": "videorectangle"}
OBJECT_TAGS = {"image": "image", "video": "video"}


@dataclass(frozen=True)
class Control:
    name: str  # from_name
    type: str  # result type: rectanglelabels, polygonlabels, brushlabels, ...
    to_name: str
    object_type: str  # image | video
    value_key: str  # the task data key of the object ($image → image)
    labels: tuple[str, ...]
    # class name (as the detector names it) → the Label value it maps to
    aliases: dict[str, str] = field(default_factory=dict)

    def label_for(self, class_name: str) -> str | None:
        return self.aliases.get(class_name) or self.aliases.get(class_name.lower())


@dataclass(frozen=True)
class LabelConfig:
    controls: tuple[Control, ...]

    def of_type(self, *types: str) -> list[Control]:
        return [c for c in self.controls if c.type in types]

    def by_name(self, name: str) -> Control | None:
        return next((c for c in self.controls if c.name == name), None)


def _refused(message: str) -> ApiError:
    return ApiError(422, message, "invalid_label_config", "label_config")


def parse_label_config(text: str) -> LabelConfig:
    """The controls meshline can fill (others are ignored); 422 when the XML is bad, too
    large, or names no control meshline can fill."""
    if len(text) > MAX_CONFIG_CHARS:
        raise ApiError(
            413,
            f"label config exceeds {MAX_CONFIG_CHARS} characters",
            "limit_exceeded",
            "label_config",
        )
    if text.count("<") > MAX_CONFIG_TAGS:
        raise _refused(f"label config has more than {MAX_CONFIG_TAGS} tags")
    try:
        root = ElementTree.fromstring(text)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise _refused(f"label config is not valid XML: {exc}") from None
    objects: dict[str, tuple[str, str]] = {}  # name → (object type, value key)
    for element in root.iter():
        kind = OBJECT_TAGS.get(str(element.tag).lower())
        value = element.get("value", "")
        if kind and element.get("name") and value.startswith("$"):
            objects[element.get("name", "")] = (kind, value[1:])
    controls = []
    for element in root.iter():
        tag = str(element.tag).lower()
        kind = IMAGE_CONTROLS.get(tag) or VIDEO_CONTROLS.get(tag)
        name, to_name = element.get("name"), element.get("toName")
        if kind is None or not name or to_name not in objects:
            continue
        object_type, value_key = objects[to_name]
        if (tag in VIDEO_CONTROLS) != (object_type == "video"):
            continue
        labels, aliases = _labels(element, root, to_name, object_type)
        controls.append(
            Control(name, kind, to_name, object_type, value_key, tuple(labels), aliases)
        )
    if not controls:
        raise _refused(
            "label config has no control meshline can fill: RectangleLabels, PolygonLabels, "
            "BrushLabels or KeyPointLabels on an Image, or VideoRectangle on a Video"
        )
    return LabelConfig(tuple(controls))


def _labels(
    element: ElementTree.Element, root: ElementTree.Element, to_name: str, object_type: str
) -> tuple[list[str], dict[str, str]]:
    """A control's Label values, and the class names each stands for: the value itself, and
    any listed in its ``predicted_values`` attribute (as Label Studio's own YOLO backend reads
    them). A VideoRectangle's labels come from a ``Labels`` tag on the same video."""
    sources = [element]
    if object_type == "video":
        sources = [e for e in root.iter() if str(e.tag).lower() == "labels"]
        sources = [e for e in sources if e.get("toName") == to_name]
    labels: list[str] = []
    aliases: dict[str, str] = {}
    for source in sources:
        for label in source.iter():
            if str(label.tag).lower() != "label" or not label.get("value"):
                continue
            value = label.get("value", "")
            labels.append(value)
            names = [value, *label.get("predicted_values", "").split(",")]
            for name in (n.strip() for n in names):
                if name:
                    aliases.setdefault(name, value)
                    aliases.setdefault(name.lower(), value)
            if len(labels) > MAX_LABELS_PER_CONTROL:
                raise _refused(
                    f"control {element.get('name')!r} has more than {MAX_LABELS_PER_CONTROL} labels"
                )
    return labels, aliases
