"""runvisor.env_names: the variables no run may set, and the pattern the OpenAPI document shows."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.env_names import (
    FORBIDDEN_NAMES,
    FORBIDDEN_PREFIXES,
    FORBIDDEN_PREFIXES_ANY_CASE,
    FORBIDDEN_SUFFIXES,
    FORBIDDEN_SUFFIXES_ANY_CASE,
    forbidden_pattern,
    forbidden_reason,
)

# What the README and the manuals name; each must be refused.
DANGEROUS = [
    # bash(1), dash(1)
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS0", "PS1", "PS2", "PS3", "PS4",
    "PROMPT_COMMAND", "IFS", "PATH", "CDPATH", "GLOBIGNORE", "EXECIGNORE", "POSIXLY_CORRECT",
    "FUNCNEST", "BASH_XTRACEFD", "BASH_LOADABLES_PATH", "BASH_COMPAT", "BASH_FUNC_ls%%",
    "BASH_ARGV0", "SHELL", "HOME", "TEXTDOMAINDIR", "MAILPATH", "ZDOTDIR", "FPATH",
    # ld.so(8)
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG_OUTPUT", "LD_BIND_NOW",
    # glibc's unsecvars.h
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
    "MALLOC_TRACE", "MALLOC_CHECK_", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS",
    "TMPDIR", "TZDIR",
    # locale(7)
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES",
    # interpreters and the programs CODE may call
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONUSERBASE",
    "PYTHONWARNINGS", "PYTHONBREAKPOINT", "PERL5LIB", "PERL5OPT", "PERLLIB", "PERL5DB",
    "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS", "CLASSPATH", "LUA_INIT", "PHPRC", "GOFLAGS", "RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER", "MAKEFILES", "MAKEFLAGS",
    "GIT_SSH_COMMAND", "GIT_EXEC_PATH", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0",
    "GIT_CONFIG_PARAMETERS", "GIT_DIR", "GIT_TEMPLATE_DIR", "GIT_ASKPASS", "GIT_PAGER",
    "EDITOR", "VISUAL", "PAGER", "LESSOPEN", "SYSTEMD_PAGER", "SUDO_ASKPASS", "SSH_ASKPASS",
    "OPENSSL_CONF", "XDG_CONFIG_HOME", "KUBECONFIG",
    # read in any letter case by their programs
    "npm_config_script_shell", "NPM_CONFIG_NODE_OPTIONS", "Npm_Config_x",
    "http_proxy", "HTTPS_PROXY", "all_proxy", "Ftp_Proxy",
    # found by an attack on the first list (each runs what its value says)
    "TAR_OPTIONS", "VIMINIT", "EXINIT", "HGRCPATH", "PARALLEL", "GIO_EXTRA_MODULES",
    "QT_PLUGIN_PATH", "BUNDLE_GEMFILE", "GEM_PATH", "PIP_INDEX_URL", "DOCKER_CONFIG", "CC",
    "AWKPATH", "MAVEN_OPTS", "GRADLE_OPTS", "ANT_OPTS", "SOME_TOOL_OPTIONS", "CFLAGS",
]  # fmt: skip

ORDINARY = [
    "GREETING", "TARGET", "A", "_x", "DEBUG", "LOG_LEVEL", "TZ", "TERM", "USER", "LOGNAME",
    "NODE_ENV", "APP_HOME_DIR", "MY_PATH", "PATHS", "SHELLY", "ENVIRONMENT", "HOMEPAGE",
    "ld_preload", "path", "home", "lang", "ifs", "bash_env", "LDAP_URI", "LCD", "GITHUB_REF",
    "PS5", "PROXY_HOST", "API_KEY",
]  # fmt: skip


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_names_are_refused_with_a_reason(name: str) -> None:
    reason = forbidden_reason(name)
    assert reason, name
    assert len(reason) < 200 and "\n" not in reason


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_are_allowed(name: str) -> None:
    assert forbidden_reason(name) is None


def test_every_listed_name_prefix_and_suffix_is_refused() -> None:
    for name in FORBIDDEN_NAMES:
        assert forbidden_reason(name) == FORBIDDEN_NAMES[name]
    for prefix in FORBIDDEN_PREFIXES:
        assert forbidden_reason(prefix + "X") == FORBIDDEN_PREFIXES[prefix]
    for suffix in FORBIDDEN_SUFFIXES:
        assert forbidden_reason("X" + suffix) == FORBIDDEN_SUFFIXES[suffix]
    for prefix in FORBIDDEN_PREFIXES_ANY_CASE:
        assert forbidden_reason(prefix.upper() + "X") == FORBIDDEN_PREFIXES_ANY_CASE[prefix]
    for suffix in FORBIDDEN_SUFFIXES_ANY_CASE:
        assert forbidden_reason("X" + suffix.upper()) == FORBIDDEN_SUFFIXES_ANY_CASE[suffix]


def test_reasons_say_why() -> None:
    assert "shell executes" in (forbidden_reason("BASH_ENV") or "")
    assert "dynamic loader" in (forbidden_reason("LD_PRELOAD") or "")
    assert "BIG5" in (forbidden_reason("LC_ALL") or "")
    assert "setuid" in (forbidden_reason("GCONV_PATH") or "")


# The OpenAPI document refuses names with this pattern: it must agree with forbidden_reason.
_PATTERN = re.compile(forbidden_pattern())
_listed = st.sampled_from(
    [*FORBIDDEN_NAMES, *FORBIDDEN_PREFIXES, *FORBIDDEN_SUFFIXES, *FORBIDDEN_PREFIXES_ANY_CASE,
     *FORBIDDEN_SUFFIXES_ANY_CASE, *DANGEROUS, *ORDINARY]
)  # fmt: skip
_word = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


@given(
    name=st.one_of(
        _word,
        _listed,
        st.tuples(_word, _listed, _word).map("".join),
        _listed.map(str.swapcase),
        st.tuples(_listed, _word).map("".join),
        st.tuples(_word, _listed).map("".join),
    )
)
def test_the_openapi_pattern_finds_exactly_the_forbidden_names(name: str) -> None:
    assert bool(_PATTERN.search(name)) == (forbidden_reason(name) is not None), name


def test_the_pattern_agrees_on_the_named_cases() -> None:
    for name in DANGEROUS:
        assert _PATTERN.search(name), name
    for name in ORDINARY:
        assert not _PATTERN.search(name), name
