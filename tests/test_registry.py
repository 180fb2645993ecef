"""The registry loads, and its errors name the file, the dataset and the key."""

from __future__ import annotations

import pytest
import yaml

from pipelines.registry import DEFAULT_REGISTRY, RegistryError, load_registry


def test_shipped_registry_has_every_format(registry):
    assert {d.format for d in registry.datasets.values()} == {
        "taobao", "tmall", "retailrocket", "kuaisar", "tenrec", "behavior_set_splits"}
    tb = registry.get("taobao")
    assert tb.behavior_names == ["pv", "fav", "cart", "buy"] and tb.targets == ["buy"]
    assert tb.behavior_bit("buy") == 8
    with pytest.raises(KeyError, match=r"behavior 'like' is not in its vocabulary \['pv', 'fav', 'cart', 'buy'\]"):
        tb.behavior_bit("like")


def _write(tmp_path, mutate):
    raw = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    mutate(raw)
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["datasets"]["tmall"].update(format="csv"), r"datasets\.tmall\.format"),
        (lambda r: r["datasets"]["taobao"].update(targets=["purchase"]),
         r"dataset 'taobao'[\s\S]*targets: behavior 'purchase' is not in the vocabulary"),
        (lambda r: r["datasets"]["taobao"].update(tragets=["buy"]), r"datasets\.taobao\.tragets: Extra inputs"),
        (lambda r: r["datasets"]["kuaisar"]["time"].update(unit="mmdd"), r"datasets\.kuaisar\.time: .*needs `year`"),
        (lambda r: r["datasets"]["taobao"].update(files={"event": "x.csv"}), r"unknown role\(s\) \['event'\]"),
        (lambda r: r["datasets"]["taobao"]["behaviors"].reverse(), r"low to high level"),
    ],
)
def test_invalid_entries_name_file_dataset_and_key(tmp_path, mutate, expected):
    path = _write(tmp_path, mutate)
    with pytest.raises(RegistryError, match=expected) as err:
        load_registry(path)
    assert str(path) in str(err.value)


def test_missing_registry_and_unknown_dataset(tmp_path, registry):
    with pytest.raises(RegistryError, match="registry file not found"):
        load_registry(tmp_path / "nope.yaml")
    with pytest.raises(RegistryError, match=r"no dataset 'retail'; known datasets: \["):
        registry.get("retail")


def test_new_dataset_in_a_known_format_needs_no_code(tmp_path):
    def add(r):
        r["datasets"]["taobao_small"] = {**r["datasets"]["taobao"], "description": "a second Taobao drop"}
    reg = load_registry(_write(tmp_path, add))
    assert reg.get("taobao_small").format == "taobao"


@pytest.mark.parametrize("stage, options", [("semantic_ids", "pipelines.semantic_ids.options.SemanticIdOptions"),
                                            ("training", "pipelines.training.stage.TrainingOptions")])
def test_stage_options_errors_name_the_dataset_and_key(registry, stage, options):
    import importlib

    module, name = options.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    bad = registry.datasets["taobao"].model_copy(update={"stages": {stage: {"levls": 3}}})
    with pytest.raises(RegistryError, match=f"datasets.taobao.stages.{stage}.levls"):
        cls.of(bad)


@pytest.mark.parametrize("stages, expected", [
    ({"sequence": {"max_len": 20}}, r"datasets\.taobao\.stages\.sequence: unknown stage"),
    ({"sequences": {"max_lenn": 20}}, r"datasets\.taobao\.stages\.sequences\.max_lenn"),
    ({"augmentation": {"mask_exponnt": 1.0}}, r"datasets\.taobao\.stages\.augmentation\.mask_exponnt"),
    ({"training": {"protocol": "released"}}, r"datasets\.taobao\.stages\.training\.protocol: .*not a split release"),
])
def test_stage_option_typos_fail_when_the_registry_loads(tmp_path, stages, expected):
    path = _write(tmp_path, lambda r: r["datasets"]["taobao"].update(stages=stages))
    with pytest.raises(RegistryError, match=expected):
        load_registry(path)
    lenient = load_registry(path, strict=False)  # the other datasets still load
    assert "taobao" in lenient.broken and lenient.get("tmall").name == "tmall"
