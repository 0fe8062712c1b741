"""Pascal VOC reader on generated files in the BCCD set's layout (tests/helpers/sample_data.py).

The oracle parses the XML files with its own code: VOC `bndbox` values are 1-based inclusive,
so the continuous box is [ymin - 1, xmin - 1, ymax, xmax] (documented in paa_tf.data.voc);
boxes of width or height <= 1 px are removed (docs/CONVENTIONS.md; like the real BCCD set, the
data has two zero-size boxes, one in the train split and one in the val split).
"""

import xml.etree.ElementTree as ET

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from paa_tf.config import DataConfig
from paa_tf.data import label_map as label_map_lib
from paa_tf.data import pipeline, records, transforms, voc


def bccd_config(sample_data, **overrides):
    fields = dict(format="voc", voc_root=str(sample_data / "bccd"), voc_train_split="train",
                  voc_val_split="val", min_size=(240,), max_size=320, image_size=(256, 384),
                  max_instances=100, deterministic=True)
    fields.update(overrides)
    return DataConfig(**fields)


def oracle(root, split):
    """{stem: (boxes [N, 4] yxyx continuous pixels, names [N])}, clipped to the 640x480
    image, boxes <= 1 px wide or high removed."""
    out = {}
    for stem in (root / "ImageSets/Main" / f"{split}.txt").read_text().split():
        tree = ET.parse(root / "Annotations" / f"{stem}.xml")
        boxes, names = [], []
        for obj in tree.findall("object"):
            b = obj.find("bndbox")
            x1, y1, x2, y2 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            x1, y1 = max(x1 - 1, 0), max(y1 - 1, 0)
            x2, y2 = min(x2, 640), min(y2, 480)
            if x2 - x1 > 1 and y2 - y1 > 1:
                boxes.append([y1, x1, y2, x2])
                names.append(obj.find("name").text)
        out[stem] = (np.array(boxes).reshape(-1, 4), names)
    return out


def test_train_split_counts_classes_and_boxes_mapped_back(sample_data):
    config = bccd_config(sample_data)
    dataset, report = pipeline.build_dataset(config, "train", is_training=True, batch_size=4,
                                             repeat=False)
    label_map = report.label_map
    assert label_map.names == ("Platelets", "RBC", "WBC") and label_map.ids == (1, 2, 3)
    expected = {k: v for k, v in oracle(sample_data / "bccd", "train").items() if len(v[0])}
    got = {}
    for batch in dataset:
        for i, source_id in enumerate(batch["source_id"].numpy()):
            valid = batch["gt_classes"][i].numpy() >= 0
            boxes = transforms.boxes_to_original(batch["gt_boxes"][i][valid][None],
                                                 batch["image_info"][i][None])[0].numpy()
            got[report.id_to_name[int(source_id)]] = (
                boxes, batch["gt_classes"][i].numpy()[valid], batch["image_info"][i].numpy())
    assert {name[:-4] for name in got} == set(expected)  # file names are <stem>.jpg
    assert report.num_boxes == sum(len(v[0]) for v in expected.values())
    assert report.filtered["boxes <= 1 px removed"] == sum(
        1 for stem in ("BloodImage_00338", "BloodImage_00343") if stem in expected)
    flips = 0
    for stem, (boxes, names) in expected.items():
        mapped, classes, info = got[stem + ".jpg"]
        assert sorted(label_map.names[c] for c in classes) == sorted(names)
        np.testing.assert_array_equal(info[0], [480, 640])
        np.testing.assert_array_equal(info[1], [240, 320])
        mirrored = boxes[:, [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 640, 0, 640]
        order = np.lexsort(mapped.T[::-1])
        if np.allclose(mapped[order], boxes[np.lexsort(boxes.T[::-1])], atol=1.0):
            continue
        np.testing.assert_allclose(mapped[order], mirrored[np.lexsort(mirrored.T[::-1])],
                                   atol=1.0)
        flips += 1
    assert 0 < flips < len(expected)


def test_zero_size_boxes_are_filtered_not_errors(sample_data):
    config = bccd_config(sample_data, voc_val_split="trainval")
    _, report = pipeline.build_dataset(config, "val", is_training=False, batch_size=8)
    expected = oracle(sample_data / "bccd", "trainval")
    assert report.num_images == len(expected)
    assert report.num_boxes == sum(len(v[0]) for v in expected.values())
    in_split = {"BloodImage_00338", "BloodImage_00343"} & set(expected)
    assert report.filtered["boxes <= 1 px removed"] == len(in_split)
    assert report.num_skipped == 0


def test_stable_ids_are_shared_by_splits_and_map_back_to_files(sample_data):
    config = bccd_config(sample_data)
    report_train = records.BadRecordReport()
    train, _ = voc.read_voc(config.voc_root, "train", report_train)
    trainval, _ = voc.read_voc(config.voc_root, "trainval", records.BadRecordReport())
    by_name = {r.name: r.image_id for r in trainval}
    assert all(by_name[r.name] == r.image_id for r in train)
    assert len({r.image_id for r in trainval}) == len(trainval)
    assert records.stable_id("BloodImage_00000") == records.stable_id("BloodImage_00000")
    assert all(0 < r.image_id < 2 ** 53 for r in trainval)  # exact in JSON / float64


def test_coco_export_of_voc_gives_ap_1_for_ground_truth(sample_data, tmp_path):
    """The VOC records as COCO JSON: evaluating the GT as detections gives AP = 1."""
    config = bccd_config(sample_data)
    raw, label_map = voc.read_voc(config.voc_root, "val", records.BadRecordReport())
    gt = records.to_coco_dict(raw, label_map)
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    detections = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"],
                       score=1.0) for a in gt["annotations"] if not a["iscrowd"]]
    evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] > 0.99
    assert label_map_lib.load_label_map(
        label_map_lib.write_label_map(label_map, tmp_path)) == label_map
