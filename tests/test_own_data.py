"""Own data without reading the source: VOC XML from any folders, data.max_instances derived
from the annotations, the decode check's function built once (issue 20, item 5)."""

import io
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from paa_tf.config import DataConfig
from paa_tf.data import pipeline, records
from paa_tf.data.records import BadRecordError
from paa_tf.data.tfrecord import _bytes as strings
from paa_tf.data.tfrecord import _floats as floats
from paa_tf.data.tfrecord import _ints as ints
from tests.test_data_voc import bccd_config, oracle


@pytest.fixture(scope="module")
def folders(sample_data, tmp_path_factory):
    """The BCCD sample's files outside the VOC layout: xml/, photos/ and a CSV split."""
    root = tmp_path_factory.mktemp("own")
    shutil.copytree(sample_data / "bccd" / "Annotations", root / "xml")
    shutil.copytree(sample_data / "bccd" / "JPEGImages", root / "photos")
    stems = (sample_data / "bccd" / "ImageSets/Main/val.txt").read_text().split()
    # A CSV as a web tool writes it: a header, file names with extensions, a second column.
    (root / "val.csv").write_text("filename,split\n" + "".join(f"{s}.jpg,val\n" for s in stems))
    return root


def _by_name(records_list):
    return {r.name: (r.boxes, r.classes) for r in records_list}


def test_voc_from_separate_folders_reads_what_the_voc_layout_reads(sample_data, folders):
    layout, layout_report, _ = pipeline.load_records(bccd_config(sample_data), "val", False)
    config = bccd_config(sample_data, voc_root="", voc_annotations=str(folders / "xml"),
                         voc_images=str(folders / "photos"),
                         voc_val_list=str(folders / "val.csv"))
    found, report, _ = pipeline.load_records(config, "val", False)
    want = _by_name(layout)
    assert set(_by_name(found)) == set(want) and len(want) == len(oracle(sample_data / "bccd",
                                                                         "val"))
    for name, (boxes, classes) in _by_name(found).items():
        np.testing.assert_array_equal(boxes, want[name][0])
        np.testing.assert_array_equal(classes, want[name][1])
    assert report.label_map == layout_report.label_map  # class names from xml/*.xml
    assert f"{folders / 'xml'} + {folders / 'photos'} (list {folders / 'val.csv'})" in \
        report.split
    # What paa_eval prints as the data it reads (not the quickstart's val_images a VOC config
    # may inherit).
    inherited = bccd_config(sample_data, val_images="data/shapes/val")
    assert pipeline.describe_source(inherited, "val") == f"{sample_data / 'bccd'} val"
    # No list file: every XML of the folder, as many as the VOC layout's splits hold together.
    every = bccd_config(sample_data, voc_root="", voc_annotations=str(folders / "xml"),
                        voc_images=str(folders / "photos"))
    everything, _, _ = pipeline.load_records(every, "val", False)
    assert len(everything) == len(list((folders / "xml").glob("*.xml")))
    missing = bccd_config(sample_data, voc_root="", voc_annotations=str(folders / "xml"),
                          voc_val_list=str(folders / "nothing.txt"))
    with pytest.raises(ValueError, match="VOC list file not found: .*nothing.txt"):
        pipeline.load_records(missing, "val", False)


def test_max_instances_is_derived_from_the_annotations_when_not_given(sample_data):
    expected = oracle(sample_data / "bccd", "train")
    most = max(len(boxes) for boxes, _ in expected.values())
    dataset, report = pipeline.build_dataset(bccd_config(sample_data, max_instances=None),
                                             "train", is_training=True, batch_size=2)
    assert report.max_instances == most and report.max_instances_derived
    assert f"data.max_instances {most} (the most boxes in one image)" in report.summary()
    assert next(iter(dataset))["gt_boxes"].shape == (2, most, 4)
    # A given value that is too small still stops, naming the image.
    name = next(stem for stem, (boxes, _) in expected.items() if len(boxes) == most)
    with pytest.raises(BadRecordError, match=rf"{name}.jpg\): {most} boxes after filtering, "
                                             rf"more than data.max_instances={most - 1}"):
        pipeline.load_records(bccd_config(sample_data, max_instances=most - 1), "train")


def test_the_decode_check_traces_its_function_once_across_threads(sample_data, folders,
                                                                  monkeypatch, caplog):
    built = []
    original = tf.function

    def counting(*args, **kwargs):
        built.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(records._graph_decode, "function", None)
    monkeypatch.setattr(tf, "function", counting)
    every = bccd_config(sample_data, voc_root="", voc_annotations=str(folders / "xml"),
                        voc_images=str(folders / "photos"), verify_images="decode")
    pipeline.load_records(every, "train")
    # Every image is decoded, by verify_images' 8 threads: more images than threads.
    assert len(list((folders / "xml").glob("*.xml"))) > 8
    assert len(built) == 1
    assert records._graph_decode.function.experimental_get_tracing_count() == 1
    assert "retracing" not in caplog.text


def _tutorial_example(filename, encoded, width, height, objects):
    """A tf.train.Example with the keys the OD API tutorial's generate_tfrecord.py writes:
    `objects` = [(class name, class id, xmin, ymin, xmax, ymax) in pixels]."""
    feature = {
        "image/height": ints([height]), "image/width": ints([width]),
        "image/filename": strings([filename.encode()]),
        "image/source_id": strings([filename.encode()]),
        "image/encoded": strings([encoded]), "image/format": strings([b"jpg"]),
        "image/object/bbox/xmin": floats([o[2] / width for o in objects]),
        "image/object/bbox/xmax": floats([o[4] / width for o in objects]),
        "image/object/bbox/ymin": floats([o[3] / height for o in objects]),
        "image/object/bbox/ymax": floats([o[5] / height for o in objects]),
        "image/object/class/text": strings([o[0].encode() for o in objects]),
        "image/object/class/label": ints([o[1] for o in objects])}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_an_object_detection_api_tutorial_record_and_pbtxt_are_read_as_they_are(tmp_path):
    (tmp_path / "label_map.pbtxt").write_text(
        "item {\n  id: 2\n  name: 'dog'\n}\nitem {\n    name: \"cat\"\n    id: 1\n}\n")
    buffer = io.BytesIO()
    Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(buffer, format="JPEG")
    objects = [("dog", 2, 10.0, 5.0, 50.0, 45.0), ("cat", 1, 30.0, 20.0, 70.0, 58.0)]
    with tf.io.TFRecordWriter(str(tmp_path / "train.record")) as writer:
        writer.write(_tutorial_example("IMG_0001.jpg", buffer.getvalue(), 80, 60, objects))
    config = DataConfig(format="tfrecord", train_tfrecords=str(tmp_path / "train.record"),
                        label_map=str(tmp_path / "label_map.pbtxt"), max_instances=None)
    found, report, _ = pipeline.load_records(config, "train")
    assert report.label_map.names == ("cat", "dog") and report.label_map.ids == (1, 2)
    (record,) = found
    assert record.image_id == records.stable_id("IMG_0001.jpg") and record.name == "IMG_0001.jpg"
    np.testing.assert_allclose(record.boxes, [[5, 10, 45, 50], [20, 30, 58, 70]], atol=1e-4)
    np.testing.assert_array_equal(record.classes, [1, 0])
    assert report.max_instances == 2
