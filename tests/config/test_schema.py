"""hatwist.config.schema: the one key table is consistent with the value classes."""

from __future__ import annotations

import attrs

from hatwist.config import DeliverySettings, HealthSettings, ServiceSettings, schema
from hatwist.config.values import NOT_A_KEY

_CLASSES = {
    schema.Section.DELIVERY: DeliverySettings,
    schema.Section.HEALTH: HealthSettings,
    schema.Section.SERVICE: ServiceSettings,
}


def test_every_field_of_every_value_class_has_exactly_one_key():
    for section, cls in _CLASSES.items():
        fields = [key.field for key in schema.KEYS if key.section is section]
        assert sorted(fields) == sorted(
            f.name for f in attrs.fields(cls) if not f.metadata.get(NOT_A_KEY))


def test_key_names_are_lower_case_and_documented():
    for key in schema.KEYS:
        assert key.name == key.name.lower()
        assert key.doc and key.type_doc and key.scopes


def test_written_defaults_convert_back_to_the_defaults():
    for key in schema.KEYS:
        if key.default is None or key.default == ():
            continue
        assert key.convert(schema.format_value(key.default)) == key.default, key.name


def test_suggest():
    assert schema.suggest("Health_Check_Intervall", list(schema.KEYS_BY_NAME)) == (
        " (did you mean 'health_check_interval'?)"
    )
    assert schema.suggest("zzz", list(schema.KEYS_BY_NAME)) == ""
