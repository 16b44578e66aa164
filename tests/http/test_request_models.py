"""runvisor.http.request_models and validation: strict request models, one 422 naming every
failing field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from runvisor.errors import BadRequest, Unprocessable
from runvisor.http.bodies import decode_json_body
from runvisor.http.request_models import (
    MAX_LIMIT,
    CommandIn,
    LegacyCommandIn,
    RestartIn,
    RunIn,
    StopIn,
)
from runvisor.http.validation import validate
from runvisor.models import CommandSpec, RestartPolicy, RestartPolicyKind, RunSpec

JSON = "application/json"
CTX = {"max_code_bytes": 100}


def check(model: type[BaseModel], data: Any, ctx: dict[str, Any] = CTX) -> Any:
    return validate(model, data, context=ctx)


def problems(model: type[BaseModel], data: Any, ctx: dict[str, Any] = CTX) -> dict[str, str]:
    """field path -> message, from the Unprocessable that validating `data` must raise."""
    with pytest.raises(Unprocessable) as info:
        validate(model, data, context=ctx)
    exc = info.value
    assert exc.status == 422
    details = exc.details  # type: ignore[attr-defined]
    assert exc.message == "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return {d["field"]: d["message"] for d in details}


# ---- CommandIn ----------------------------------------------------------------------------


def test_minimal_command() -> None:
    spec = check(CommandIn, {"code": "echo hi"}).to_spec()
    assert spec == CommandSpec(code="echo hi")
    assert spec.restart == RestartPolicy()


def test_full_command() -> None:
    body = {
        "code": "sleep 1",
        "name": "nap",
        "description": "naps",
        "timeout_s": 5,
        "stuck_after_s": 2.5,
        "restart": {"policy": "on-failure", "max_restarts": 5, "window_s": 30},
        "max_output_bytes": 1024,
    }
    spec = check(CommandIn, body).to_spec()
    assert spec == CommandSpec(
        code="sleep 1",
        name="nap",
        description="naps",
        timeout_s=5.0,
        stuck_after_s=2.5,
        restart=RestartPolicy(RestartPolicyKind.ON_FAILURE, 5, 30.0, 1.0, 60.0),
        max_output_bytes=1024,
    )
    assert isinstance(spec.restart.window_s, float)


def test_explicit_nulls_mean_absent() -> None:
    body = {"code": "x", "name": None, "timeout_s": None, "restart": None, "max_output_bytes": None}
    assert check(CommandIn, body).to_spec() == CommandSpec(code="x")


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        ({}, "code", "is required"),
        ({"code": ""}, "code", "must not be blank"),
        ({"code": " \n\t"}, "code", "must not be blank"),
        ({"code": "echo\x00"}, "code", "must not contain NUL bytes"),
        ({"code": 5}, "code", "must be a string"),
        ({"code": "x" * 101}, "code", "at most 100 bytes"),
        ({"code": "é" * 51}, "code", "at most 100 bytes"),  # bytes, not characters
        ({"code": "x", "name": ""}, "name", "at least 1 characters"),
        ({"code": "x", "name": "a" * 201}, "name", "at most 200 characters"),
        ({"code": "x", "name": "a\tb"}, "name", "control characters"),
        ({"code": "x", "name": "a\x85b"}, "name", "control characters"),
        ({"code": "x", "description": None}, "description", "must be a string"),
        ({"code": "x", "description": "d" * 10_001}, "description", "at most 10000"),
        ({"code": "x", "description": "\x00"}, "description", "NUL"),
        ({"code": "x", "timeout_s": 0}, "timeout_s", "must be > 0"),
        ({"code": "x", "timeout_s": -1.5}, "timeout_s", "must be > 0"),
        ({"code": "x", "timeout_s": 31_536_001}, "timeout_s", "must be <= 31536000"),
        ({"code": "x", "timeout_s": "5"}, "timeout_s", "must be a number"),
        ({"code": "x", "timeout_s": True}, "timeout_s", "must be a number"),
        ({"code": "x", "timeout_s": 10**400}, "timeout_s", "must be a number"),
        ({"code": "x", "stuck_after_s": 0}, "stuck_after_s", "must be > 0"),
        ({"code": "x", "max_output_bytes": 0}, "max_output_bytes", "must be >= 1"),
        (
            {"code": "x", "max_output_bytes": 2**40 + 1},
            "max_output_bytes",
            "must be <= 1099511627776",
        ),
        ({"code": "x", "max_output_bytes": 1.0}, "max_output_bytes", "must be an integer"),
        ({"code": "x", "max_output_bytes": "5"}, "max_output_bytes", "must be an integer"),
        ({"code": "x", "max_output_bytes": True}, "max_output_bytes", "must be an integer"),
        ({"code": "x", "restart": "always"}, "restart", "must be an object"),
        ({"code": "x", "restart": {}}, "restart.policy", "is required"),
        ({"code": "x", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_command_problems(body: dict[str, Any], field: str, phrase: str) -> None:
    found = problems(CommandIn, body)
    assert field in found, found
    assert phrase in found[field]


def test_code_limit_comes_from_the_context() -> None:
    assert check(CommandIn, {"code": "x" * 100}).code == "x" * 100
    assert "code" in problems(CommandIn, {"code": "x" * 11}, {"max_code_bytes": 10})
    # Without a context the RUNVISOR_MAX_CODE_BYTES default (64 KiB) applies.
    assert check(CommandIn, {"code": "x" * 65536}, {}).code
    assert "code" in problems(CommandIn, {"code": "x" * 65537}, {})


def test_every_problem_is_reported_at_once() -> None:
    body = {
        "code": "a\x00",
        "restart": {"policy": "sometimes", "max_restarts": -1},
        "timeout_s": "5",
        "extra": 1,
    }
    found = problems(CommandIn, body)
    assert found == {
        "code": "must not contain NUL bytes",
        "restart.policy": "must be one of 'never', 'on-failure' or 'always'",
        "restart.max_restarts": "must be >= 0",
        "timeout_s": "must be a number",
        "extra": "unknown field",
    }


def test_details_carry_field_message_and_type_but_never_the_input() -> None:
    with pytest.raises(Unprocessable) as info:
        check(RunIn, {"env": {"TOKEN": "hunter2\x00"}})
    details = info.value.details  # type: ignore[attr-defined]
    assert details == [
        {"field": "env.TOKEN", "message": "must not contain NUL bytes", "type": "value_error"}
    ]
    assert "hunter2" not in info.value.message
    json.dumps(details)


def test_long_field_names_are_shortened_in_messages() -> None:
    found = problems(CommandIn, {"code": "x", "k" * 5000: 1})
    (field,) = found
    assert len(field) < 100


# ---- RestartIn ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        ({"policy": "Always"}, "policy", "must be one of"),
        ({"policy": "always", "max_restarts": 1001}, "max_restarts", "<= 1000"),
        ({"policy": "always", "max_restarts": 2.0}, "max_restarts", "integer"),
        ({"policy": "always", "window_s": 0}, "window_s", "> 0"),
        ({"policy": "always", "window_s": 86_401}, "window_s", "<= 86400"),
        ({"policy": "always", "backoff_s": -0.1}, "backoff_s", ">= 0"),
        ({"policy": "always", "backoff_s": 3601, "backoff_max_s": 5000}, "backoff_s", "<= 3600"),
        ({"policy": "always", "backoff_max_s": 86_401}, "backoff_max_s", "<= 86400"),
        (
            {"policy": "always", "backoff_s": 10, "backoff_max_s": 5},
            "backoff_max_s",
            ">= backoff_s (10)",
        ),
        ({"policy": "always", "backoff_max_s": 0.5}, "backoff_max_s", ">= backoff_s (1)"),
        ({"policy": "always", "jitter": 1}, "jitter", "unknown field"),
    ],
)
def test_restart_problems(body: dict[str, Any], field: str, phrase: str) -> None:
    found = problems(RestartIn, body)
    assert phrase in found[field], found


def test_restart_bounds_are_inclusive_where_documented() -> None:
    body = {
        "policy": "never",
        "max_restarts": 0,
        "window_s": 86_400,
        "backoff_s": 0,
        "backoff_max_s": 0,
    }
    assert check(RestartIn, body).to_policy() == RestartPolicy(
        RestartPolicyKind.NEVER, 0, 86_400.0, 0.0, 0.0
    )
    body = {"policy": "always", "max_restarts": 1000, "backoff_s": 3600, "backoff_max_s": 86_400}
    assert check(RestartIn, body).to_policy().max_restarts == 1000


# ---- RunIn, StopIn, LegacyCommandIn -------------------------------------------------------


def test_run_spec() -> None:
    assert check(RunIn, {}).to_spec() == RunSpec()
    body = {"timeout_s": 1, "restart": {"policy": "always"}, "env": {"A": "1", "_b9": ""}}
    spec = check(RunIn, body).to_spec()
    assert spec == RunSpec(
        timeout_s=1.0, restart=RestartPolicy(RestartPolicyKind.ALWAYS), env={"A": "1", "_b9": ""}
    )


def test_env_limits() -> None:
    many = {f"V{i}": "x" for i in range(100)}
    assert len(check(RunIn, {"env": many}).to_spec().env) == 100
    assert "at most 100 entries" in problems(RunIn, {"env": {**many, "V100": "x"}})["env"]
    assert check(RunIn, {"env": {"BIG": "x" * 32768}}).env == {"BIG": "x" * 32768}
    assert "32768 bytes" in problems(RunIn, {"env": {"BIG": "é" * 16385}})["env.BIG"]


@pytest.mark.parametrize(
    ("env", "field", "phrase"),
    [
        ({"1A": "x"}, "env.1A", "invalid variable name"),
        ({"A-B": "x"}, "env.A-B", "invalid variable name"),
        ({"": "x"}, 'env.""', "invalid variable name"),
        ({"RUNVISOR_RUN_ID": "7"}, "env.RUNVISOR_RUN_ID", "RUNVISOR_ prefix is reserved"),
        ({"A": "a\x00b"}, "env.A", "NUL"),
        ({"A": 1}, "env.A", "must be a string"),
        ({"A": None}, "env.A", "must be a string"),
    ],
)
def test_env_problems(env: dict[str, Any], field: str, phrase: str) -> None:
    found = problems(RunIn, {"env": env})
    assert phrase in found[field], found


def test_env_names_are_case_sensitive_about_the_reserved_prefix() -> None:
    assert check(RunIn, {"env": {"runvisor_x": "1"}}).env == {"runvisor_x": "1"}


@pytest.mark.parametrize(
    "name", ["BASH_ENV", "LD_PRELOAD", "PATH", "PS4", "SHELLOPTS", "LC_ALL", "PYTHONPATH",
             "GIT_SSH_COMMAND", "http_proxy", "BASH_FUNC_x"]
)  # fmt: skip
def test_names_that_change_what_runs_are_refused_in_a_run_and_a_declaration(name: str) -> None:
    for model, body in (
        (RunIn, {"env": {name: "$(id >&2)", "OK": "1"}}),
        (CommandIn, {"code": "echo benign", "env": {name: None, "OK": None}}),
        (CommandIn, {"code": "echo benign", "env": {name: "x"}}),
    ):
        found = problems(model, body)
        assert list(found) == [f"env.{name}"], found
        # Said as the reason, not as a malformed name.
        assert found[f"env.{name}"].endswith("; not allowed"), found
        assert "invalid variable name" not in found[f"env.{name}"]
    assert "shell executes" in problems(RunIn, {"env": {"BASH_ENV": "x"}})["env.BASH_ENV"]


def test_a_command_declares_variables_with_defaults_or_null() -> None:
    body = {"code": "echo", "env": {"GREETING": "hello", "TARGET": None, "EMPTY": ""}}
    spec = check(CommandIn, body).to_spec()
    assert spec.env == {"GREETING": "hello", "TARGET": None, "EMPTY": ""}
    assert check(CommandIn, {"code": "echo", "env": None}).to_spec().env == {}
    many = {f"V{i}": None for i in range(100)}
    assert len(check(CommandIn, {"code": "x", "env": many}).to_spec().env) == 100


@pytest.mark.parametrize(
    ("env", "field", "phrase"),
    [
        ({f"V{i}": None for i in range(101)}, "env", "at most 100 entries"),
        ({"1A": None}, "env.1A", "invalid variable name"),
        ({"RUNVISOR_X": None}, "env.RUNVISOR_X", "RUNVISOR_ prefix is reserved"),
        ({"A": "a\x00b"}, "env.A", "NUL"),
        ({"A": "é" * 16385}, "env.A", "32768 bytes"),
        ({"A": 1}, "env.A", "must be a string"),
        ({"A": True}, "env.A", "must be a string"),
    ],
)
def test_declaration_problems(env: dict[str, Any], field: str, phrase: str) -> None:
    found = problems(CommandIn, {"code": "x", "env": env})
    assert phrase in found[field], found


def test_command_limits() -> None:
    body = {"code": "x", "limits": {"cpu": 10, "as": MAX_LIMIT, "fsize": "unlimited",
                                    "nofile": 1, "nproc": None}}  # fmt: skip
    assert check(CommandIn, body).to_spec().limits == {
        "cpu": 10, "as": MAX_LIMIT, "fsize": "unlimited", "nofile": 1
    }  # fmt: skip
    assert check(CommandIn, {"code": "x", "limits": {}}).to_spec().limits == {}
    assert check(CommandIn, {"code": "x"}).to_spec() == CommandSpec(code="x")


@pytest.mark.parametrize(
    ("limits", "field", "phrase"),
    [
        ({"cpu": 0}, "limits.cpu", "from 1 to"),
        ({"as": -1}, "limits.as", "from 1 to"),
        ({"fsize": MAX_LIMIT + 1}, "limits.fsize", "from 1 to"),
        ({"nofile": 1.5}, "limits.nofile", "positive integer"),
        ({"nproc": "5"}, "limits.nproc", "positive integer"),
        ({"cpu": "Unlimited"}, "limits.cpu", "positive integer"),
        ({"cpu": True}, "limits.cpu", "positive integer"),
        ({"as_": 1}, "limits.as_", "unknown field"),
        ({"rss": 1}, "limits.rss", "unknown field"),
        ("unlimited", "limits", "must be an object"),
    ],
)
def test_limit_problems(limits: Any, field: str, phrase: str) -> None:
    found = problems(CommandIn, {"code": "x", "limits": limits})
    assert phrase in found[field], found


def test_stop() -> None:
    assert check(StopIn, {}).grace_s is None
    assert check(StopIn, {"grace_s": 0}).grace_s == 0
    assert check(StopIn, {"grace_s": 3600}).grace_s == 3600
    assert ">= 0" in problems(StopIn, {"grace_s": -1})["grace_s"]
    assert "<= 3600" in problems(StopIn, {"grace_s": 3600.5})["grace_s"]
    assert "unknown field" in problems(StopIn, {"signal": 9})["signal"]


def test_legacy_command() -> None:
    assert check(
        LegacyCommandIn, {"code": "echo", "description": "maybe"}
    ).to_spec() == CommandSpec(code="echo", description="maybe")
    assert check(LegacyCommandIn, {"code": "echo"}).description == ""
    # Go's encoding/json: null leaves a string empty, and field names match case-insensitively.
    assert check(LegacyCommandIn, {"code": "echo", "description": None}).description == ""
    assert check(LegacyCommandIn, {"Code": "echo", "DESCRIPTION": "d"}).to_spec() == CommandSpec(
        code="echo", description="d"
    )
    assert problems(LegacyCommandIn, {"code": "echo", "name": "n"}) == {"name": "unknown field"}
    assert problems(LegacyCommandIn, {"code": "  "}) == {"code": "must not be blank"}
    assert "at most 100 bytes" in problems(LegacyCommandIn, {"code": "x" * 101})["code"]
    assert problems(LegacyCommandIn, {"description": "d"}) == {"code": "is required"}


def test_validate_on_a_non_object() -> None:
    assert problems(CommandIn, ["code"]) == {"body": "must be an object"}


# ---- hypothesis: whatever decodes, validates or is a 422 ----------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["never", "on-failure", "always", "A", "RUNVISOR_X", "", " ", "\x00"])
)
_json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    ["code", "Code", "name", "description", "timeout_s", "stuck_after_s", "restart", "policy",
     "max_restarts", "window_s", "backoff_s", "backoff_max_s", "max_output_bytes", "env",
     "grace_s", "A", "_x", "limits", "cpu", "as", "PATH"]
) | st.text(max_size=10)  # fmt: skip
_objects = st.dictionaries(
    _field_names, _json_values | st.dictionaries(_field_names, _json_values), max_size=6
)


@settings(max_examples=300)
@given(obj=_objects, model=st.sampled_from([CommandIn, RunIn, StopIn, LegacyCommandIn, RestartIn]))
def test_any_decoded_object_validates_or_is_unprocessable(
    obj: dict[str, Any], model: type[BaseModel]
) -> None:
    raw = json.dumps(obj).encode()
    try:
        data = decode_json_body(raw, JSON, required=True)
    except BadRequest:
        return  # e.g. a lone surrogate or duplicate key: refused before validation
    assert data is not None
    try:
        result = validate(model, data, context=CTX)
    except Unprocessable as exc:
        assert exc.details  # type: ignore[attr-defined]
        json.dumps(exc.details)  # type: ignore[attr-defined]
        return
    if hasattr(result, "to_spec"):
        result.to_spec()
