"""runvisor.http.bodies: decoding a request body, strict about what JSON it accepts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.errors import BadRequest, UnsupportedMediaType
from runvisor.http.bodies import decode_json_body

JSON = "application/json"


# ---- decode_json_body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        JSON,
        "application/json; charset=utf-8",
        "Application/JSON ;charset=UTF-8",
        "application/vnd.runvisor+json",
        "application/merge-patch+json",
        "text/x-foo+json",
    ],
)
def test_json_media_types_are_accepted(content_type: str) -> None:
    assert decode_json_body(b'{"a": 1}', content_type, required=True) == {"a": 1}


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "+json",
     "application/+json", "/json", "json"],
)  # fmt: skip
def test_other_media_types_are_refused(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_json_body(b'{"a": 1}', content_type, required=True)
    assert info.value.status == 415
    assert "application/json" in info.value.message


def test_media_type_check_can_be_skipped_for_legacy_routes() -> None:
    assert decode_json_body(b"{}", "text/plain", required=True, check_media_type=False) == {}


@pytest.mark.parametrize("raw", [b"", b"  \r\n\t"])
def test_empty_body(raw: bytes) -> None:
    # No content type needed for an empty optional body (POST .../stop with nothing).
    assert decode_json_body(raw, None, required=False) is None
    with pytest.raises(BadRequest) as info:
        decode_json_body(raw, JSON, required=True)
    assert info.value.code == "missing_body"


def test_invalid_json_reports_the_position() -> None:
    with pytest.raises(BadRequest) as info:
        decode_json_body(b'{\n  "code": "x",\n  oops}', JSON, required=True)
    assert info.value.code == "invalid_json"
    assert "line 3 column 3" in info.value.message


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        (b'{"code": "\xff"}', "not UTF-8 at byte 10"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "-Infinity"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b'{"a": [["\\ud800"]]}', "surrogate"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON"),
        (b'{"a": 1} x', "Extra data"),
    ],
)
def test_invalid_json_cases(raw: bytes, phrase: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_json_body(raw, JSON, required=True)
    assert info.value.code == "invalid_json"
    assert phrase in info.value.message


def test_surrogate_pairs_and_a_bom_are_fine() -> None:
    raw = '\ufeff{"a": "\\ud83d\\ude00 é"}'.encode()
    assert decode_json_body(raw, JSON, required=True) == {"a": "😀 é"}


@pytest.mark.parametrize(
    ("raw", "kind"), [(b"[]", "an array"), (b'"x"', "a string"), (b"1", "a number"),
                      (b"null", "null"), (b"true", "a boolean")]
)  # fmt: skip
def test_non_objects_are_refused(raw: bytes, kind: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_json_body(raw, JSON, required=False)
    assert info.value.code == "not_an_object"
    assert kind in info.value.message


@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decoding_arbitrary_bytes_only_raises_bad_request(raw: bytes) -> None:
    try:
        result = decode_json_body(raw, JSON, required=False)
    except BadRequest as exc:
        assert exc.code in ("invalid_json", "not_an_object")
        return
    assert result is None or isinstance(result, dict)
