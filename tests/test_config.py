import pytest
import yaml

from conftest import REPO, deep_update
from pipeline.config import ConfigError, flatten, load_params, parse_params


def test_default_params_parse_into_typed_objects():
    p = load_params(REPO / "params.yaml")
    assert p.data.image_size == 32 and p.data.channels == 1
    assert p.data.classes == tuple(str(i) for i in range(10))
    assert p.gan.weights.cycle == 10.0 and p.gan.weights.identity == 5.0
    assert p.gan.betas == (0.5, 0.999)
    assert {"source_only", "translated", "dann", "randomized", "randomized_st", "target_oracle"} <= set(p.variants)
    assert p.variant("dann").method == "dann" and p.variant("randomized").augment == "strong"
    assert p.task.steps > 0 and set(p.augment) >= {"default", "strong"}


@pytest.mark.parametrize("overrides, key, expected", [
    ({"gan": {"weigths": {}}}, "gan.weigths", "unknown key"),
    ({"data": {"image_size": "big"}}, "data.image_size", "an integer"),
    ({"data": {"image_size": -32}}, "data.image_size", "between 8 and 4096"),
    ({"data": {"classes": []}}, "data.classes", "at least two"),
    ({"data": {"channels": 2}}, "data.channels", "1 (grey) or 3"),
    ({"gan": {"weights": {"cycle": -1}}}, "gan.weights.cycle", "non-negative"),
    ({"gan": {"mode": "wgan"}}, "gan.mode", "'lsgan'"),
    ({"gan": {"betas": [0.5]}}, "gan.betas", "2 values"),
    ({"task": {"steps": 1.5}}, "task.steps", "an integer"),
    ({"task": {"epochs": 3}}, "task.epochs", "unknown key"),
    ({"data": {"skip_bad_images": "yes"}}, "data.skip_bad_images", "true or false"),
    ({"data": {"render": {"thickness": [3, 1]}}}, "data.render.thickness", "min <= max"),
    ({"variants": {"dann": {"method": "magic", "train": "x"}}}, "variants.dann.method", "'supervised'"),
    ({"variants": {"dann": {"params": {"gamma": "fast"}}}}, "variants.dann.params.gamma", "a number"),
    ({"variants": {"dann": {"params": {"trade_off": -1}}}}, "variants.dann.params.trade_off", "non-negative"),
    ({"variants": {"dann": {"params": {"gama": 1}}}}, "variants.dann.params.gama", "unknown key"),
    ({"variants": {"source_only": {"params": {"x": 1}}}}, "variants.source_only.params.x", "unknown key"),
    ({"variants": {"randomized": {"augment": "wild"}}}, "variants.randomized.augment", "'default'"),
    ({"variants": {"randomized_st": {"params": {"strong": "wild"}}}}, "variants.randomized_st.params", "'wild'"),
    ({"variants": {"randomized_st": {"params": {"threshold": 2}}}}, "variants.randomized_st.params.threshold", "(0, 1]"),
    ({"seed": None}, "seed", "an integer"),
])
def test_bad_values_name_the_key(default_raw, overrides, key, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(deep_update(default_raw, overrides))
    assert key in str(err.value) and expected in str(err.value)


def test_missing_user_folder_is_named(default_raw, tmp_path):
    raw = deep_update(default_raw, {"data": {
        "source": {"format": "imagefolder", "root": str(tmp_path / "nowhere")},
        "target": {"format": "imagefolder", "root": str(tmp_path)}}})
    with pytest.raises(ConfigError, match=r"data\.source\.root: .*nowhere.* does not exist"):
        parse_params(raw)


def test_flat_target_needs_a_labelled_test_set(default_raw, tmp_path):
    raw = deep_update(default_raw, {"data": {
        "source": {"format": "imagefolder", "root": str(tmp_path)},
        "target": {"format": "folder", "root": str(tmp_path)}}})
    with pytest.raises(ConfigError, match="data.target.test_root"):
        parse_params(raw)


def test_load_params_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_params(path)
    path.write_text(yaml.safe_dump({"seed": 0}))
    with pytest.raises(ConfigError, match="data: missing"):
        load_params(path)


def test_fingerprint_follows_the_named_sections(default_raw):
    a = parse_params(default_raw)
    b = parse_params(deep_update(default_raw, {"gan": {"lr": 0.001}}))
    assert a.fingerprint("data") == b.fingerprint("data")
    assert a.fingerprint("gan") != b.fingerprint("gan")
    assert a.fingerprint() != b.fingerprint()


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_variant_needing_labels_of_an_unlabelled_target_is_refused_by_name(default_raw, tmp_path):
    # The README's plug-in path: a flat unlabelled real folder cannot feed the supervised target_oracle.
    raw = deep_update(default_raw, {"data": {
        "source": {"format": "imagefolder", "root": str(tmp_path)},
        "target": {"format": "folder", "root": str(tmp_path), "test_root": str(tmp_path)}}})
    with pytest.raises(ConfigError, match=r"variants\.target_oracle\.train: .*no labels.*remove variants\.target_oracle"):
        parse_params(raw)
    del raw["variants"]["target_oracle"]
    assert "target_oracle" not in parse_params(raw).variants
    # With labelled real training images the same variant is fine.
    raw = deep_update(default_raw, {"data": {
        "source": {"format": "imagefolder", "root": str(tmp_path)},
        "target": {"format": "imagefolder", "root": str(tmp_path)}}})
    assert parse_params(raw).variants["target_oracle"].train == "data/prepared/target/train"
