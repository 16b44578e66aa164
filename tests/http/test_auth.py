"""runvisor.http.auth: token table parsing, authentication, role checks."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from runvisor.errors import Forbidden, SettingsError, Unauthorized
from runvisor.http.auth import (
    Principal,
    Role,
    TokenTable,
    generate_admin_token,
    parse_tokens,
    require,
)


def digest8(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def test_roles_are_ordered_by_privilege() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert [r.value for r in Role] == [1, 2, 3]


def test_parse_plain_tokens_and_authenticate_each() -> None:
    table = parse_tokens("viewer:v1,operator:o1,admin:a1")
    assert len(table) == 3
    for token, role in (("v1", Role.VIEWER), ("o1", Role.OPERATOR), ("a1", Role.ADMIN)):
        principal = table.authenticate({"Authorization": f"Bearer {token}"})
        assert principal == Principal(role=role, name=f"{role.name.lower()}:{digest8(token)}")


def test_whitespace_and_empty_entries_are_tolerated() -> None:
    table = parse_tokens(" , viewer : v1 ,, ADMIN:a1 ,\n")
    assert len(table) == 2
    assert table.authenticate({"token": "a1"}).role is Role.ADMIN


def test_empty_spec_gives_an_empty_table_that_accepts_nothing() -> None:
    table = parse_tokens("")
    assert len(table) == 0
    with pytest.raises(Unauthorized) as info:
        table.authenticate({"Authorization": "Bearer anything"})
    assert info.value.code == "invalid_token"


@pytest.mark.parametrize("prefix", ["sha256:", "SHA256:"])
@pytest.mark.parametrize("upper", [False, True])
def test_sha256_entries_match_the_plain_token(prefix: str, upper: bool) -> None:
    hexdigest = hashlib.sha256(b"s3cret").hexdigest()
    table = parse_tokens(f"operator:{prefix}{hexdigest.upper() if upper else hexdigest}")
    principal = table.authenticate({"token": "s3cret"})
    assert principal == Principal(Role.OPERATOR, f"operator:{hexdigest[:8]}")
    # The digest itself is not a token.
    with pytest.raises(Unauthorized):
        table.authenticate({"token": hexdigest})


def test_the_same_token_twice_with_one_role_is_fine() -> None:
    hexdigest = hashlib.sha256(b"t").hexdigest()
    assert len(parse_tokens(f"admin:t,admin:t,admin:sha256:{hexdigest}")) == 1


@pytest.mark.parametrize(
    ("spec", "position", "phrase"),
    [
        ("root:topsecret", 1, "unknown role"),
        ("viewer:v,topsecret", 2, "expected role:token"),
        ("viewer:v,,admin:", 2, "empty token"),
        ("admin:   ", 1, "empty token"),
        ("admin:sha256:abc", 1, "64 hex digits"),
        ("admin:sha256:" + "g" * 64, 1, "64 hex digits"),
        ("admin:sha256:" + "a" * 65, 1, "64 hex digits"),
        ("viewer:topsecret,admin:topsecret", 2, "already has the viewer role"),
        (
            "viewer:topsecret,admin:sha256:" + hashlib.sha256(b"topsecret").hexdigest(),
            2,
            "already has the viewer role",
        ),
        ("admin:top secret", 1, "whitespace or control"),
        ("admin:top\x01secret", 1, "whitespace or control"),
    ],
)
def test_bad_specs_name_the_setting_and_position_but_not_the_secret(
    spec: str, position: int, phrase: str
) -> None:
    with pytest.raises(SettingsError) as info:
        parse_tokens(spec)
    message = str(info.value)
    assert message.startswith(f"RUNVISOR_TOKENS: entry {position}: ")
    assert phrase in message
    assert "topsecret" not in message
    assert "top secret" not in message
    assert "top\x01secret" not in message
    assert "\n" not in message


def test_swapped_token_and_role_does_not_echo_the_token() -> None:
    with pytest.raises(SettingsError) as info:
        parse_tokens("hunter2:admin")
    assert "hunter2" not in str(info.value)


def test_table_repr_reveals_nothing() -> None:
    table = parse_tokens("admin:topsecret")
    assert "topsecret" not in repr(table)
    assert digest8("topsecret") not in repr(table)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer tok"},
        {"authorization": "bearer tok"},
        {"AUTHORIZATION": "BEARER   tok  "},
        {"token": "tok"},
        {"Token": " tok "},
        {"Authorization": "Basic dXNlcjpwdw==", "token": "tok"},  # falls back to the legacy header
        {"Authorization": "Bearer ", "token": "tok"},
        CIMultiDict({"AUTHORIZATION": "Bearer tok"}),
    ],
)
def test_token_sources(headers: dict[str, str]) -> None:
    table = parse_tokens("operator:tok")
    assert table.authenticate(headers).role is Role.OPERATOR


def test_bearer_wins_over_the_legacy_header() -> None:
    table = parse_tokens("viewer:v,admin:a")
    assert table.authenticate({"Authorization": "Bearer a", "token": "v"}).role is Role.ADMIN


@pytest.mark.parametrize("headers", [{}, {"token": ""}, {"token": "   "}, {"Other": "x"}])
def test_missing_token(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized) as info:
        parse_tokens("admin:a").authenticate(headers)
    assert info.value.code == "missing_token"
    assert info.value.status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"token": "wrong"},
        {"Authorization": "Basic YTph"},
        {"Authorization": "Bearer"},
        {"Authorization": "a"},  # the bare token without a scheme is not accepted
    ],
)
def test_invalid_token(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized) as info:
        parse_tokens("admin:a").authenticate(headers)
    assert info.value.code == "invalid_token"


def test_require() -> None:
    operator = Principal(Role.OPERATOR, "operator:12345678")
    require(operator, Role.VIEWER)
    require(operator, Role.OPERATOR)
    with pytest.raises(Forbidden) as info:
        require(operator, Role.ADMIN)
    assert info.value.status == 403
    assert "admin" in info.value.message


def test_principal_is_frozen() -> None:
    principal = Principal(Role.VIEWER, "viewer:00000000")
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.role = Role.ADMIN  # type: ignore[misc]


def test_generated_admin_tokens_are_random_and_parse() -> None:
    first, second = generate_admin_token(), generate_admin_token()
    assert first != second
    assert len(first) >= 43
    table = parse_tokens(f"admin:{first}")
    assert table.authenticate({"Authorization": f"Bearer {first}"}).role is Role.ADMIN
    with pytest.raises(Unauthorized):
        table.authenticate({"Authorization": f"Bearer {second}"})


# Anything but separators, whitespace, control characters and surrogates.
_token_chars = st.characters(
    min_codepoint=0x21,
    blacklist_characters=",",
    blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"),
)


@given(
    st.dictionaries(
        st.text(_token_chars, min_size=1, max_size=40).filter(
            lambda t: not t.lower().startswith("sha256:") and t.strip() == t
        ),
        st.sampled_from(list(Role)),
        max_size=8,
    )
)
def test_every_parsed_token_authenticates_with_its_role(tokens: dict[str, Role]) -> None:
    spec = ",".join(f"{role.name.lower()}:{token}" for token, role in tokens.items())
    table = parse_tokens(spec)
    assert isinstance(table, TokenTable)
    for token, role in tokens.items():
        principal = table.authenticate({"Authorization": f"Bearer {token}"})
        assert principal.role is role
        assert principal.name == f"{role.name.lower()}:{digest8(token)}"
