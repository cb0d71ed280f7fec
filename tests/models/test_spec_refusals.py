"""Model specs (budgetnet.models.spec.ResNetSpec.from_dict) fuzzed with any YAML value: a
valid spec that round-trips or a one-line refusal (200 examples; BUDGETNET_FUZZ_EXAMPLES=20000
runs more)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from budgetnet.models.spec import ResNetSpec
from budgetnet.models.zoo import model_spec

from refusals import SETTING_VALUES as _VALUES
from refusals import fuzz_settings
from refusals import valid_or_refused as _valid_or_refused

FUZZ = fuzz_settings(200)
MODEL_KEYS = [f.name for f in dataclasses.fields(ResNetSpec)]


@FUZZ
@given(st.dictionaries(st.sampled_from(MODEL_KEYS), _VALUES, max_size=4))
def test_fuzz_model_specs_are_valid_or_refused(fields):
    base = model_spec("resnet24_b343").to_dict()
    spec = _valid_or_refused(lambda: ResNetSpec.from_dict({**base, **fields}))
    if spec is not None:
        assert ResNetSpec.from_dict(spec.to_dict()) == spec
