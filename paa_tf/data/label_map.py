"""Label map: contiguous class indices (0..C-1, used inside the model) <-> dataset ids.

File format (JSON, kept beside the data and beside every trained model)::

    [{"index": 0, "id": 1, "name": "person"}, {"index": 1, "id": 2, "name": "bicycle"}, ...]

`index` runs 0..C-1 without gaps; `id` is the dataset's own category id (COCO 1..90,
non-contiguous; VOC index + 1); `name` is the category name. Both `id` and `name` are unique.
`load_label_map` also accepts a COCO instances JSON (its `categories` list, sorted by id) and
the Object Detection API's `label_map.pbtxt` (`item { id: 1 name: 'cat' }` entries, sorted
by id).
"""

import dataclasses
import json
import os
import re

LABEL_MAP_FILENAME = "label_map.json"

# The 20 Pascal VOC classes in their conventional order (VOC devkit).
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Ordered categories: `ids[i]` and `names[i]` belong to contiguous class index `i`."""

    ids: tuple
    names: tuple

    def __post_init__(self):
        if len(self.ids) != len(self.names):
            raise ValueError(f"label map has {len(self.ids)} ids but {len(self.names)} names")
        if not self.ids:
            raise ValueError("label map is empty: a detection dataset needs at least one class")
        for what, values in (("id", self.ids), ("name", self.names)):
            seen = set()
            for value in values:
                if value in seen:
                    raise ValueError(f"label map lists the category {what} {value!r} twice; "
                                     "ids and names must be unique")
                seen.add(value)

    @property
    def num_classes(self):
        return len(self.ids)

    def index_of_id(self, category_id):
        """Contiguous index of dataset id `category_id`, or None when it is not in the map."""
        return self._id_to_index().get(category_id)

    def index_of_name(self, name):
        """Contiguous index of category `name`, or None when it is not in the map."""
        return self._name_to_index().get(name)

    def _id_to_index(self):
        cache = self.__dict__.get("_id_cache")
        if cache is None:
            cache = {cid: i for i, cid in enumerate(self.ids)}
            object.__setattr__(self, "_id_cache", cache)
        return cache

    def _name_to_index(self):
        cache = self.__dict__.get("_name_cache")
        if cache is None:
            cache = {name: i for i, name in enumerate(self.names)}
            object.__setattr__(self, "_name_cache", cache)
        return cache

    def to_entries(self):
        """The file format: a list of {index, id, name} dicts."""
        return [{"index": i, "id": int(cid), "name": str(name)}
                for i, (cid, name) in enumerate(zip(self.ids, self.names))]

    def coco_categories(self):
        """COCO `categories` list (for writing ground truth or detections as COCO JSON)."""
        return [{"id": int(cid), "name": str(name), "supercategory": ""}
                for cid, name in zip(self.ids, self.names)]


def from_coco_categories(categories, source="<categories>"):
    """LabelMap of a COCO `categories` list: indices follow increasing category id."""
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{source}: 'categories' must be a non-empty list of "
                         "{{'id': int, 'name': str}} objects")
    pairs = []
    for position, category in enumerate(categories):
        if (not isinstance(category, dict) or not isinstance(category.get("id"), int)
                or isinstance(category.get("id"), bool)):
            raise ValueError(f"{source}: categories[{position}] = {category!r} needs an integer "
                             "'id'; fix the JSON")
        pairs.append((category["id"], str(category.get("name", category["id"]))))
    pairs.sort()
    return LabelMap(ids=tuple(p[0] for p in pairs), names=tuple(p[1] for p in pairs))


def from_names(names):
    """LabelMap for a list of names (VOC): index i gets id i + 1 (COCO-style ids start at 1)."""
    names = tuple(str(n) for n in names)
    return LabelMap(ids=tuple(range(1, len(names) + 1)), names=names)


def write_label_map(label_map, path):
    """Write `label_map` as JSON to `path` (a file, or a folder that gets label_map.json)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, LABEL_MAP_FILENAME)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(label_map.to_entries(), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _from_pbtxt(path):
    """LabelMap of an Object Detection API `label_map.pbtxt` (its items sorted by id)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    pairs = []
    for position, body in enumerate(re.findall(r"item\s*\{(.*?)\}", text, re.S)):
        ident = re.search(r"\bid\s*:\s*(-?\d+)", body)
        name = re.search(r"\bname\s*:\s*(['\"])(.*?)\1", body)
        if ident is None or name is None:
            raise ValueError(f"label map {path}: item {position} needs an integer 'id' and a "
                             f"quoted 'name' (got {body.strip()!r})")
        pairs.append((int(ident.group(1)), name.group(2)))
    if not pairs:
        raise ValueError(f"label map {path} holds no 'item {{ id: ... name: ... }}' entries")
    pairs.sort()
    return LabelMap(ids=tuple(p[0] for p in pairs), names=tuple(p[1] for p in pairs))


def load_label_map(path):
    """Read a label map file (list of {index, id, name}), a COCO JSON's `categories` or an
    Object Detection API `.pbtxt`.

    `path` may be a folder holding label_map.json. Raises ValueError naming the file and the
    entry when the content is not a valid label map.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, LABEL_MAP_FILENAME)
    if not os.path.isfile(path):
        raise ValueError(f"label map file not found: {path}; write one with "
                         "paa_tf.data.label_map.write_label_map or paa_make_tfrecord")
    if path.endswith(".pbtxt"):
        return _from_pbtxt(path)
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"label map {path} cannot be read: {error}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"label map {path} is not valid JSON (line {error.lineno}, column "
                         f"{error.colno}: {error.msg}); fix or rewrite the file") from error
    if isinstance(content, dict) and "categories" in content:
        return from_coco_categories(content["categories"], source=path)
    if not isinstance(content, list) or not content:
        raise ValueError(f"label map {path} must be a non-empty JSON list of "
                         "{\"index\", \"id\", \"name\"} objects (or a COCO JSON with categories)")
    entries = sorted(content, key=lambda e: e.get("index", -1) if isinstance(e, dict) else -1)
    for position, entry in enumerate(entries):
        if (not isinstance(entry, dict) or entry.get("index") != position
                or not isinstance(entry.get("id"), int) or "name" not in entry):
            raise ValueError(f"label map {path}: entry {entry!r} is invalid; entries need "
                             f"integer 'index' 0..{len(entries) - 1} without gaps, an integer "
                             "'id' and a 'name'")
    return LabelMap(ids=tuple(e["id"] for e in entries),
                    names=tuple(str(e["name"]) for e in entries))
