"""Config system: YAML files, base chains, strict dotted overrides, round trip."""

import ast
import pathlib

import pytest

from paa_tf import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = config_lib.load_config(CONFIGS / name)
    assert cfg.model.num_classes is None or cfg.model.num_classes > 0  # None: from the data


def test_r50_1x_follows_the_authors_schedule():
    cfg = config_lib.load_config(CONFIGS / "paa_r50_fpn_1x_coco.yaml")
    assert (cfg.train.total_steps, cfg.train.lr_steps) == (90000, (60000, 80000))
    assert cfg.train.batch_size == 16 and cfg.train.base_lr == 0.01
    assert cfg.train.warmup_method == "constant" and cfg.train.warmup_steps == 500
    assert cfg.data.min_size == (800,) and cfg.data.max_size == 1333


def test_base_chain_overrides_only_what_it_names():
    cfg = config_lib.load_config(CONFIGS / "paa_r101_fpn_2x_coco.yaml")
    assert cfg.model.backbone == "resnet101"
    assert cfg.data.min_size == (640, 800)
    assert (cfg.train.total_steps, cfg.train.lr_steps) == (180000, (120000, 160000))
    assert cfg.train.base_lr == 0.01  # inherited from the 1x file


def test_presets_are_package_data_linked_from_the_repository_root():
    assert CONFIGS.is_symlink() and CONFIGS.resolve() == config_lib.PRESET_DIR
    assert config_lib.PRESET_DIR == REPO / "paa_tf" / "configs"
    assert "quickstart" in config_lib.preset_names()


def test_a_shipped_preset_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    by_path = config_lib.load_config(CONFIGS / "paa_r101_fpn_2x_coco.yaml")
    assert config_lib.load_config("paa_r101_fpn_2x_coco") == by_path
    assert config_lib.load_config("paa_r101_fpn_2x_coco.yaml") == by_path
    # A user's YAML elsewhere: its base a shipped preset by name; it overrides one key.
    (tmp_path / "mine.yaml").write_text("base: paa_r101_fpn_2x_coco\ntrain:\n  base_lr: 0.02\n")
    mine = config_lib.load_config(tmp_path / "mine.yaml")
    assert mine.train.base_lr == 0.02 and by_path.train.base_lr == 0.01
    assert config_lib.dataclasses.replace(mine, train=by_path.train) == by_path


def test_a_file_beside_wins_over_a_preset_and_a_missing_one_names_the_presets(tmp_path):
    (tmp_path / "quickstart.yaml").write_text("train:\n  batch_size: 3\n")
    (tmp_path / "mine.yaml").write_text("base: quickstart.yaml\n")
    assert config_lib.load_config(tmp_path / "mine.yaml").train.batch_size == 3
    (tmp_path / "other.yaml").write_text("base: sub/quickstart.yaml\n")  # a path: no preset
    with pytest.raises(config_lib.ConfigError, match=r"not found: .*sub/quickstart.yaml \(a "
                                                     r"shipped preset .*quickstart"):
        config_lib.load_config(tmp_path / "other.yaml")


def test_override_types_and_lists():
    cfg = config_lib.load_config(
        CONFIGS / "quickstart.yaml",
        "train.total_steps=10,train.lr_steps=[4,8],model.aux_head=centerness,"
        "eval.score_voting=false,train.base_lr=0.02")
    assert cfg.train.total_steps == 10 and cfg.train.lr_steps == (4, 8)
    assert cfg.model.aux_head == "centerness" and cfg.eval.score_voting is False
    assert cfg.train.base_lr == pytest.approx(0.02)


def test_misspelt_override_names_key_and_nearest():
    with pytest.raises(config_lib.ConfigError, match=r"'train.totl_steps'.*'total_steps'"):
        config_lib.load_config(CONFIGS / "quickstart.yaml", "train.totl_steps=5")


def test_misspelt_section_names_nearest():
    with pytest.raises(config_lib.ConfigError, match=r"'modle'.*'model'"):
        config_lib.build_config([{"modle": {"backbone": "tiny"}}])


def test_wrong_type_names_key():
    with pytest.raises(config_lib.ConfigError, match=r"'train.total_steps' expects an integer"):
        config_lib.build_config([{"train": {"total_steps": "many"}}])
    with pytest.raises(config_lib.ConfigError, match=r"'eval.score_voting' expects true or false"):
        config_lib.build_config(overrides="eval.score_voting=3")


def test_invalid_choice_and_image_size():
    with pytest.raises(config_lib.ConfigError, match="assign.separation"):
        config_lib.build_config(overrides="assign.separation=zz")
    with pytest.raises(config_lib.ConfigError, match="multiple of 128"):
        config_lib.build_config(overrides="data.image_size=[300,256]")


@pytest.mark.parametrize("key", sorted(config_lib._CHOICES))
def test_every_choice_field_refuses_a_value_outside_its_list(key):
    # One declaration per choice field (the `_choice` default of the dataclass); the check
    # and the code that reads the list back (e.g. buckets.MODES) use it.
    with pytest.raises(config_lib.ConfigError,
                       match=rf"'{key}' is 'zz'; choose one of \(.*'{config_lib.choices(key)[0]}'"):
        config_lib.build_config(overrides=f"{key}=zz")


def test_modules_read_their_choices_from_the_config():
    from paa_tf import assign
    from paa_tf.assign import separation
    from paa_tf.data import buckets, records
    from paa_tf.inference import postprocess
    from paa_tf.modeling import backbone
    from paa_tf.serving import batching

    assert assign.METHODS == config_lib.choices("assign.method")
    assert separation.SCHEMES == config_lib.choices("assign.separation")
    assert buckets.MODES == config_lib.choices("data.buckets")
    assert records.LEVELS == config_lib.choices("data.verify_images")
    assert backbone.BACKBONES == config_lib.choices("model.backbone")
    assert set(backbone.RESNET_DEPTHS) | set(backbone.RESNEXT) == set(backbone.BACKBONES) - {
        "tiny"}
    assert backbone.RESNEXT["resnext101_64x4d"] == (101, 64, 4)
    assert postprocess.SCORES == config_lib.choices("eval.score")
    assert batching.MODES == config_lib.choices("export.batching")


def _config_field_names():
    return {field.name for section in config_lib.dataclasses.fields(config_lib.ExperimentConfig)
            for field in config_lib.dataclasses.fields(section.default_factory)}


def test_no_shadow_defaults_of_config_fields():
    # `getattr(cfg, "field", default)` writes a second default beside the dataclass's; the
    # two drift (assign.max_gt_per_batch was 256 in one place and 0 in the other).
    names = _config_field_names()
    found = []
    for path in sorted((REPO / "paa_tf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr" and len(node.args) == 3
                    and any(word in ast.unparse(node.args[0]) for word in ("cfg", "config"))
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.args[1].value}")
    assert not found, f"shadow defaults of config fields: {found}"


def test_evaluation_scale_has_one_owner():
    from paa_tf.data import buckets
    from paa_tf.data.inference_preprocess import InferencePreprocess
    from paa_tf.inference import tta

    cfg = config_lib.build_config(overrides="data.min_size=[640,800],data.max_size=1000,"
                                            "data.image_size=[1024,1024]")
    assert cfg.data.eval_shorter_side == 800
    assert InferencePreprocess.from_config(cfg).shorter_side == 800
    assert buckets.scale_sides(cfg.data, is_training=False) == [800]
    assert tta.tta_views(cfg, flip=True) == [(800, False), (800, True)]
    assert buckets.scale_sides(cfg.data, is_training=True) == list(range(640, 801))


@pytest.mark.parametrize("old_key,new_key,other", [
    ("assign.focal_alpha", "loss.focal_alpha", 0.5),
    ("assign.focal_gamma", "loss.focal_gamma", 1.5),
    ("export.score_voting", "eval.score_voting", False)])
def test_a_knob_lives_in_one_section_and_its_old_key_must_agree(tmp_path, old_key, new_key,
                                                                 other):
    section, name = old_key.split(".")
    new_section = new_key.split(".")[0]
    assert not hasattr(getattr(config_lib.ExperimentConfig(), section), name)
    default = getattr(getattr(config_lib.ExperimentConfig(), new_section), name)
    old = tmp_path / "old.yaml"  # a run's config.yaml saved before the key moved
    old.write_text(f"{section}:\n  {name}: {str(default).lower()}\n")
    assert getattr(getattr(config_lib.load_config(old), new_section), name) == default
    old.write_text(f"{section}:\n  {name}: {str(other).lower()}\n")
    with pytest.raises(config_lib.ConfigError,
                       match=rf"config key '{old_key}' was removed: '{new_key}' alone"):
        config_lib.load_config(old)
    agreeing = f"{new_key}={str(other).lower()},{old_key}={str(other).lower()}"
    cfg = config_lib.load_config(overrides=agreeing)
    assert getattr(getattr(cfg, new_section), name) == other


@pytest.mark.parametrize("key", ["train.batch_size", "eval.batch_size", "train.total_steps",
                                 "model.num_classes", "assign.fnp_count"])
def test_counts_below_one_name_the_key(key):
    with pytest.raises(config_lib.ConfigError, match=f"'{key}' is 0; it must be at least 1"):
        config_lib.build_config(overrides=f"{key}=0")


def test_bad_yaml_file_names_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(config_lib.ConfigError, match="bad.yaml"):
        config_lib.load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  backbon: tiny\n")
    with pytest.raises(config_lib.ConfigError, match=r"typo.yaml.*'model.backbon'.*'backbone'"):
        config_lib.load_config(typo)


def test_resolved_config_round_trips(tmp_path):
    cfg = config_lib.load_config(CONFIGS / "quickstart.yaml", "train.total_steps=7")
    path = config_lib.save_config(cfg, tmp_path / "model" / "config.yaml")
    assert config_lib.load_config(path) == cfg


def test_plus_one_is_one_switch_and_the_removed_eval_key_must_agree(tmp_path):
    cfg = config_lib.load_config(overrides="model.plus_one=true")
    assert cfg.model.plus_one and not hasattr(cfg.eval, "plus_one")
    assert "plus_one" not in config_lib.to_dict(cfg)["eval"]
    # A run saved before the key was removed holds eval.plus_one: fine when it agrees ...
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  plus_one: true\neval:\n  plus_one: true\n")
    assert config_lib.load_config(old).model.plus_one
    # ... an error naming both keys when it does not.
    old.write_text("model:\n  plus_one: true\neval:\n  plus_one: false\n")
    with pytest.raises(config_lib.ConfigError,
                       match=r"old.yaml: config key 'eval.plus_one' was removed: "
                             r"'model.plus_one' alone"):
        config_lib.load_config(old)
    with pytest.raises(config_lib.ConfigError, match="eval.plus_one.*model.plus_one"):
        config_lib.load_config(overrides="eval.plus_one=true")
    with pytest.raises(config_lib.ConfigError, match="eval.plus_one.*model.plus_one"):
        config_lib.build_config([{"eval": {"plus_one": True}}])


def test_exponent_numbers_load_from_files_and_overrides(tmp_path):
    """YAML 1.1 reads 1e-3 as a string; the reference configs write learning rates so."""
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  base_lr: 1e-3\n  weight_decay: 1E-4\n  warmup_factor: 5.0e-1\n"
                    "  momentum: 9e-1\n  total_steps: 2e3\n")
    cfg = config_lib.load_config(path, "train.bias_weight_decay=2.5e-5,eval.voting_sigma=25e-3")
    assert cfg.train.base_lr == 1e-3 and cfg.train.weight_decay == 1e-4
    assert cfg.train.warmup_factor == 0.5 and cfg.train.momentum == 0.9
    assert cfg.train.total_steps == 2000 and isinstance(cfg.train.total_steps, int)
    assert cfg.train.bias_weight_decay == 2.5e-5 and cfg.eval.voting_sigma == 0.025
    # Still strings where a string is expected, and still refused where a number is.
    assert config_lib.load_config(None, "data.label_map=1e3x").data.label_map == "1e3x"
    with pytest.raises(config_lib.ConfigError, match="'train.base_lr' expects a number"):
        config_lib.load_config(None, "train.base_lr=1e-3x")


@pytest.mark.parametrize("override, message", [
    ("train.base_lr=-0.01", "'train.base_lr' is -0.01; it must be greater than 0"),
    ("train.base_lr=0", "'train.base_lr' is 0.0; it must be greater than 0"),
    ("train.base_lr=.inf", "'train.base_lr' is inf; it must be a finite number"),
    ("train.base_lr=.nan", "'train.base_lr' is nan; it must be a finite number"),
    ("train.weight_decay=-1e-4", "'train.weight_decay' is -0.0001; it must be at least 0"),
    ("train.momentum=1", "'train.momentum' is 1.0; it must be at least 0 and less than 1"),
    ("loss.reg_weight=-.inf", "'loss.reg_weight' is -inf; it must be a finite number"),
    ("data.pixel_std=[58,0,57]", r"'data.pixel_std' is \(58.0, 0.0, 57.0\); it must be greater"),
    ("eval.nms_iou=1.5", "'eval.nms_iou' is 1.5; it must be greater than 0 and at most 1"),
    ("train.warmup_steps=-1", "'train.warmup_steps' is -1; it must not be negative"),
])
def test_out_of_range_numbers_name_the_key(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(CONFIGS / "quickstart.yaml", override)
