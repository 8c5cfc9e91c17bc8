"""Mappings and codecs (pure), and the config errors a mapping gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomd.bridges.topics import CodecError, Translator, decode_payload, encode_payload
from loomd.errors import ConfigError
from loomd.settings import load_config


@pytest.mark.parametrize(
    ("mqtt", "bus", "mqtt_topic", "bus_topic"),
    [
        ("sensors/+/temp", "sensor.*.temp", "sensors/kitchen/temp", "sensor.kitchen.temp"),
        ("a/#", "b.#", "a/x/y/z", "b.x.y.z"),
        ("a/+/c/#", "x.*.y.#", "a/1/c/2/3", "x.1.y.2.3"),
        ("plain/topic", "plain.topic", "plain/topic", "plain.topic"),
    ],
)
def test_translation_both_ways(mqtt: str, bus: str, mqtt_topic: str, bus_topic: str) -> None:
    t = Translator(mqtt, bus)
    assert t.to_bus(mqtt_topic) == bus_topic
    assert t.to_mqtt(bus_topic) == mqtt_topic


def test_no_match_and_untranslatable_levels() -> None:
    t = Translator("sensors/+/temp", "sensor.*.temp")
    assert t.to_bus("sensors/a/humidity") is None
    assert t.to_mqtt("sensor.a.b.temp") is None
    with pytest.raises(CodecError, match="no bus name"):
        t.to_bus("sensors/a.b/temp")  # a dot would split the bus segment
    with pytest.raises(CodecError):
        t.to_bus("sensors//temp")


def test_codecs() -> None:
    assert decode_payload("json", b'{"c": 1}') == {"c": 1}
    assert decode_payload("text", "é".encode()) == "é"
    assert decode_payload("raw", b"\x00\xff") == b"\x00\xff"
    assert encode_payload("json", {"c": 1}) == b'{"c":1}'
    assert encode_payload("text", "hi") == b"hi"
    with pytest.raises(CodecError, match="malformed JSON"):
        decode_payload("json", b"{nope")
    with pytest.raises(CodecError, match="UTF-8"):
        decode_payload("text", b"\xff")
    with pytest.raises(CodecError):
        encode_payload("json", b"bytes are not JSON")
    with pytest.raises(CodecError):
        encode_payload("json", float("nan"))


def _load(tmp_path: Path, text: str) -> None:
    p = tmp_path / "loomd.toml"
    p.write_text(text)
    load_config(p)


@pytest.mark.parametrize(
    ("entry", "key", "expected"),
    [
        ('mqtt = "a/+"\nbus = "a.*"\nqos = 3', "mqtt.map[1].qos", "an integer from 0 to 2"),
        ('mqtt = "a/+"\nbus = "a.b"', "mqtt.map[1].bus", "same wildcards"),
        ('mqtt = "a/#/b"\nbus = "a.#.b"', "mqtt.map[1].mqtt", "# only as its last"),
        ('mqtt = "a/+"\nbus = "a.*"\ncodec = "xml"', "mqtt.map[1].codec", "json, raw, text"),
        ('mqtt = "a/+"\nbus = "a.*"\ndirection = "up"', "mqtt.map[1].direction", "in, out"),
    ],
)
def test_a_bad_mapping_names_its_key(tmp_path: Path, entry: str, key: str, expected: str) -> None:
    good = '[[mqtt.map]]\nmqtt = "x/+"\nbus = "x.*"\n'
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f"[mqtt]\n{good}[[mqtt.map]]\n{entry}\n")
    assert err.value.key == key
    assert expected in str(err.value)
