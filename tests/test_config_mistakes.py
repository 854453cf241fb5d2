"""Config mistakes caught at config time, in one line that names the key or the override (issue 12 item 4)."""

from __future__ import annotations

import pytest

from bench.config import compose, expand_sweep, validate
from bench.errors import ConfigError, UserError


def error_of(overrides: list[str]) -> UserError:
    with pytest.raises(UserError) as info:
        validate(compose(overrides))
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("url", ["http://localhost:abc/v1", "http://127.0.0.1:99999/v1", "http://:8000/v1"])
def test_base_url_with_a_bad_port_or_no_host_is_a_config_error(url: str) -> None:
    err = error_of(["explainer=openai", f"explainer.llm.base_url={url}"])
    assert isinstance(err, ConfigError) and err.key == "explainer.llm.base_url" and "localhost:8000" in str(err)


def test_base_url_error_does_not_echo_userinfo() -> None:
    err = error_of(["explainer=openai", "explainer.llm.base_url=http://user:sk-CANARY@localhost:port/v1"])
    assert "sk-CANARY" not in str(err) and "'port'" in str(err)


@pytest.mark.parametrize("bad", ["units.count=[1", "units.layers=[0,1", "run_name='abc"])
def test_unbalanced_bracket_names_the_override(bad: str) -> None:
    err = error_of(["explainer=token_list", bad])
    assert f"invalid override {bad!r}" in str(err)
    with pytest.raises(UserError, match="invalid override"):
        expand_sweep(["seed=0,1", bad])


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["explainer=anthropic", "explainer.temperature=1.5"], "explainer.temperature"),
        (["simulator=anthropic_all_at_once_sampled", "simulator.temperature=1.2"], "simulator.temperature"),
    ],
)
def test_anthropic_temperature_outside_0_1_is_a_config_error(overrides: list[str], key: str) -> None:
    err = error_of(overrides)
    assert isinstance(err, ConfigError) and err.key == key and "0..1" in str(err)


def test_anthropic_temperature_inside_0_1_is_accepted() -> None:
    settings, parts = validate(compose(["explainer=anthropic", "explainer.temperature=0.7"]))
    assert parts.explainer.temperature == 0.7


@pytest.mark.parametrize("overrides", [["scorer=[nope]"], ["scorer=[correlation,nope]"], ["scorer=nope"]])
def test_unknown_scorer_lists_the_options(overrides: list[str]) -> None:
    err = error_of(overrides)
    assert isinstance(err, ConfigError) and err.key == "scorer"
    assert "no option 'nope'" in str(err) and "correlation" in str(err) and "ablation" in str(err)
