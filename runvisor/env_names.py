"""Environment variables a run may never set, even when its command declares them (pure).

A run is `/bin/sh attempt_wrapper.sh` (dash on Debian, bash elsewhere) running
`/bin/bash -c CODE`, and CODE may call any program. An operator may start runs but not write
code, so no variable of a run may make the shells, the dynamic loader, libc or a program that
CODE calls run or load code other than CODE, read code or configuration from a place the caller
picks, or read CODE itself differently. The names below come from the manuals named beside each
group; a name matches exactly, by prefix or by suffix (case-insensitively only where the program
that reads it ignores case). The list cannot name every variable of every program: a command
that calls a program not covered here should not declare that program's variables.

`forbidden_reason(name)` says why a name is refused, or None. The HTTP layer refuses such names
in a command's declaration and in a run's env (runvisor/http/request_models.py), and the spawn drops
any that reached a stored run (runvisor/procs/run_env.py).

HOME is refused too: a non-interactive bash runs nothing from it, but the programs CODE calls
do read code and configuration from it (Python runs the `import` lines of .pth files in
~/.local/lib/pythonX.Y/site-packages at start-up; git reads ~/.gitconfig, whose core.pager,
core.sshCommand and aliases are commands; ssh reads ~/.ssh/config, whose ProxyCommand is one).
The service's own HOME is still passed to every run.
"""

from __future__ import annotations

_SHELL = "changes what the shell executes"
_LOADER = "changes what the dynamic loader loads into every program"
_LIBC = "glibc ignores it in setuid programs: it changes what libc loads or where it reads"
_LOCALE = (
    "changes how bash reads the code: in a multibyte locale such as BIG5 or GBK, a byte"
    " 0x5c (backslash) or 0x60 (backtick) can be read as the second half of a character"
)
_INTERPRETER = "makes an interpreter load or run code from where it points"
_PROGRAM = "names a program that other programs run"
_CONFIG = "names configuration that can make a program run commands"
_NETWORK = "changes where a program's network traffic goes or which servers it trusts"
_PARSED = "makes a library parse a file the caller picks; it ignores it in setuid programs"

# Exact names -> why.
FORBIDDEN_NAMES: dict[str, str] = {
    # bash(1): startup files, options and expansions read from the environment.
    "BASH_ENV": f"{_SHELL} (bash runs the file it names before the command)",
    "ENV": f"{_SHELL} (sh, and bash in POSIX mode, run the file it names)",
    "SHELLOPTS": f"{_SHELL} (it turns on set -o options such as xtrace or noexec)",
    "BASHOPTS": f"{_SHELL} (it turns on shopt options such as extdebug or expand_aliases)",
    "PS0": f"{_SHELL} (prompt strings are expanded, command substitution included)",
    "PS1": f"{_SHELL} (prompt strings are expanded, command substitution included)",
    "PS2": f"{_SHELL} (prompt strings are expanded, command substitution included)",
    "PS3": f"{_SHELL} (prompt strings are expanded, command substitution included)",
    "PS4": f"{_SHELL} (expanded, command substitution included, before each traced command)",
    "PROMPT_COMMAND": f"{_SHELL} (bash runs it before each prompt)",
    "IFS": f"{_SHELL} (it changes how words are split)",
    "PATH": f"{_SHELL} (it changes which program a command name runs)",
    "CDPATH": f"{_SHELL} (it changes which directory cd enters)",
    "GLOBIGNORE": f"{_SHELL} (it changes what a glob matches)",
    "EXECIGNORE": f"{_SHELL} (it changes which programs the shell finds)",
    "POSIXLY_CORRECT": f"{_SHELL} (bash and GNU tools switch to POSIX mode)",
    "FUNCNEST": f"{_SHELL} (functions fail past the nesting it sets)",
    "TEXTDOMAIN": f'{_SHELL} (bash expands the translation it picks for $"..." strings)',
    "TEXTDOMAINDIR": f'{_SHELL} (bash expands the translation it picks for $"..." strings)',
    "SHELL": f"{_SHELL} (programs that start a shell run the one it names)",
    # dash(1): the interactive mail check reads the files these name.
    "MAIL": f"{_SHELL} (the shell reads the mail file it names)",
    "MAILPATH": f"{_SHELL} (the shell reads the files it names and expands their messages)",
    # zsh(1), ksh(1): startup files and autoloaded functions, in case CODE starts one.
    "ZDOTDIR": f"{_SHELL} (zsh runs its startup files from there, non-interactive too)",
    "FPATH": f"{_SHELL} (ksh and zsh load functions from files found there)",
    # glibc's unsecvars.h: what the loader drops for setuid programs, besides LD_* (below).
    "GCONV_PATH": f"{_LIBC} (iconv loads shared objects from there)",
    "GETCONF_DIR": _LIBC,
    "GLIBC_TUNABLES": _LIBC,
    "HOSTALIASES": _LIBC,
    "LOCALDOMAIN": _LIBC,
    "LOCPATH": f"{_LIBC} (locale data)",
    "NIS_PATH": _LIBC,
    "NLSPATH": f"{_LIBC} (message catalogs, used as format strings)",
    "RESOLV_HOST_CONF": _LIBC,
    "RES_OPTIONS": _LIBC,
    "TMPDIR": f"{_LIBC} (temporary files)",
    "TZDIR": f"{_LIBC} (time zone files)",
    # musl's locale(7) path.
    "MUSL_LOCPATH": "musl reads locale data from there",
    # locale(7).
    "LANG": _LOCALE,
    "LANGUAGE": _LOCALE,
    # HOME: see the module docstring.
    "HOME": "programs read code and settings from it (Python runs the .pth files under"
    " ~/.local; ~/.gitconfig and ~/.ssh/config name commands)",
    "XDG_CONFIG_HOME": f"{_CONFIG} (git and most tools read their settings from there)",
    "XDG_CONFIG_DIRS": f"{_CONFIG} (git and most tools read their settings from there)",
    # node(1), java(1), and the build tools' option variables.
    "NODE_OPTIONS": f"{_INTERPRETER} (node --require)",
    "NODE_PATH": _INTERPRETER,
    "NODE_REPL_EXTERNAL_MODULE": _INTERPRETER,
    "NODE_EXTRA_CA_CERTS": _NETWORK,
    "NODE_TLS_REJECT_UNAUTHORIZED": _NETWORK,
    "JAVA_TOOL_OPTIONS": f"{_INTERPRETER} (java -javaagent)",
    "_JAVA_OPTIONS": f"{_INTERPRETER} (java -javaagent)",
    "JDK_JAVA_OPTIONS": f"{_INTERPRETER} (java -javaagent)",
    "JAVA_OPTS": f"{_INTERPRETER} (java -javaagent)",
    "JAVA_HOME": f"{_INTERPRETER} (launchers run the java it names)",
    "CLASSPATH": _INTERPRETER,
    "MAVEN_OPTS": _INTERPRETER,
    "GRADLE_OPTS": _INTERPRETER,
    "PHPRC": f"{_INTERPRETER} (php.ini's auto_prepend_file)",
    "PHP_INI_SCAN_DIR": f"{_INTERPRETER} (php.ini's auto_prepend_file)",
    "R_LIBS_SITE": _INTERPRETER,
    "TCLLIBPATH": _INTERPRETER,
    "TCL_LIBRARY": _INTERPRETER,
    "GOFLAGS": f"{_INTERPRETER} (go -toolexec)",
    "GOENV": f"{_INTERPRETER} (it names a file of go settings, GOFLAGS included)",
    "GOROOT": _INTERPRETER,
    "GOPATH": _INTERPRETER,
    "GOTOOLCHAIN": f"{_INTERPRETER} (go downloads and runs the toolchain it names)",
    "GOPROXY": f"{_INTERPRETER} (go downloads modules from there)",
    "RUSTC": _PROGRAM,
    "RUSTC_WRAPPER": _PROGRAM,
    "RUSTFLAGS": f"{_INTERPRETER} (rustc -C linker)",
    "RUSTDOCFLAGS": f"{_INTERPRETER} (rustdoc -C linker)",
    # make(1): it reads these makefiles and flags before the command's own.
    "MAKEFILES": f"{_INTERPRETER} (make reads the makefiles it names first)",
    "MAKEFLAGS": f"{_INTERPRETER} (make takes options from it)",
    "GNUMAKEFLAGS": f"{_INTERPRETER} (make takes options from it)",
    "MFLAGS": f"{_INTERPRETER} (make takes options from it)",
    # Programs that other programs start: editors, pagers, browsers, remote shells.
    "EDITOR": _PROGRAM,
    "VISUAL": _PROGRAM,
    "PAGER": _PROGRAM,
    "MANPAGER": _PROGRAM,
    "MANOPT": f"{_PROGRAM} (man -P, --html)",
    "BROWSER": _PROGRAM,
    "RSYNC_RSH": _PROGRAM,
    "RSYNC_CONNECT_PROG": _PROGRAM,
    "CVS_RSH": _PROGRAM,
    # Configuration files whose settings are commands.
    "PSQLRC": f"{_CONFIG} (psql's \\! runs shell commands)",
    "KUBECONFIG": f"{_CONFIG} (kubectl's exec credential plugins)",
    "AWS_CONFIG_FILE": f"{_CONFIG} (the AWS CLI's credential_process)",
    "CURL_HOME": f"{_CONFIG} (a .curlrc there can make curl write any file)",
    "WGETRC": f"{_CONFIG} (wget's use_askpass)",
    # ncurses: terminal descriptions, parsed from the files these name.
    "TERMINFO": _PARSED,
    "TERMINFO_DIRS": _PARSED,
    "TERMCAP": _PARSED,
    "SSL_CERT_FILE": _NETWORK,
    "SSL_CERT_DIR": _NETWORK,
    "CURL_CA_BUNDLE": _NETWORK,
    "REQUESTS_CA_BUNDLE": _NETWORK,
    # Found by attacking the first version of this list: each runs what its value says.
    "TAR_OPTIONS": f"{_INTERPRETER} (tar --checkpoint-action=exec, --to-command)",
    "VIMINIT": f"{_INTERPRETER} (vim runs its Ex commands, ! included)",
    "EXINIT": f"{_INTERPRETER} (ex and vi run its commands, ! included)",
    "MYVIMRC": _CONFIG,
    "HGRCPATH": f"{_CONFIG} (Mercurial hooks are commands)",
    "PARALLEL": f"{_INTERPRETER} (GNU parallel takes options, --env and commands, from it)",
    "AWKPATH": f"{_INTERPRETER} (gawk -f and @include read programs from it)",
    "AWKLIBPATH": f"{_INTERPRETER} (gawk loads extensions from it)",
    "GREP_OPTIONS": f"{_INTERPRETER} (old GNU grep takes options from it)",
    "ZIPOPT": f"{_INTERPRETER} (zip -T -TT runs a command)",
    "UNZIP": f"{_INTERPRETER} (unzip takes options from it)",
    "GZIP": f"{_INTERPRETER} (gzip takes options from it)",
    "XZ_DEFAULTS": f"{_INTERPRETER} (xz takes options from it)",
    "XZ_OPT": f"{_INTERPRETER} (xz takes options from it)",
    "BZIP2": f"{_INTERPRETER} (bzip2 takes options from it)",
    "SSH_AUTH_SOCK": _NETWORK,
    "GNUPGHOME": _CONFIG,
    "GIO_EXTRA_MODULES": _LOADER,
    "GIO_MODULE_DIR": _LOADER,
    "GTK_PATH": _LOADER,
    "GTK_MODULES": _LOADER,
    "QT_PLUGIN_PATH": _LOADER,
    "QT_QPA_PLATFORM_PLUGIN_PATH": _LOADER,
    "GST_PLUGIN_PATH": _LOADER,
    "BUNDLE_GEMFILE": f"{_INTERPRETER} (bundler evaluates the Gemfile it names)",
    "GEM_HOME": _INTERPRETER,
    "GEM_PATH": _INTERPRETER,
    "RUBYGEMS_GEMDEPS": _INTERPRETER,
    "COMPOSER_HOME": _CONFIG,
    "R_PROFILE": _INTERPRETER,
    "R_PROFILE_USER": _INTERPRETER,
    "R_ENVIRON": _INTERPRETER,
    "R_ENVIRON_USER": _INTERPRETER,
    "R_LIBS": _INTERPRETER,
    "R_LIBS_USER": _INTERPRETER,
    "DOCKER_HOST": _NETWORK,
    "DOCKER_CONFIG": f"{_CONFIG} (credential helpers are programs)",
    "CONTAINERS_CONF": _CONFIG,
    "HELM_PLUGINS": _INTERPRETER,
    # make(1) and build tools: the compilers and tools they run.
    "CC": _PROGRAM,
    "CXX": _PROGRAM,
    "CPP": _PROGRAM,
    "LD": _PROGRAM,
    "AR": _PROGRAM,
    "AS": _PROGRAM,
    "NM": _PROGRAM,
    "RANLIB": _PROGRAM,
    "STRIP": _PROGRAM,
    "OBJCOPY": _PROGRAM,
    "CFLAGS": f"{_INTERPRETER} (compiler flags: -fplugin, -B, -wrapper)",
    "CXXFLAGS": f"{_INTERPRETER} (compiler flags: -fplugin, -B, -wrapper)",
    "CPPFLAGS": f"{_INTERPRETER} (compiler flags: -fplugin, -B, -wrapper)",
    "LDFLAGS": f"{_INTERPRETER} (linker flags: --plugin, -Wl,...)",
    "COMPILER_PATH": f"{_INTERPRETER} (gcc runs its subprograms from it)",
    "GCC_EXEC_PREFIX": f"{_INTERPRETER} (gcc runs its subprograms from it)",
    "LIBRARY_PATH": _LOADER,
    "CPATH": _INTERPRETER,
    "PKG_CONFIG_PATH": _INTERPRETER,
    "CMAKE_PREFIX_PATH": _INTERPRETER,
}

# Prefixes (exact letter case) -> why.
FORBIDDEN_PREFIXES: dict[str, str] = {
    # bash(1): BASH_ENV runs a file, BASH_LOADABLES_PATH is where `enable -f` loads shared
    # objects from, BASH_XTRACEFD, BASH_COMPAT, BASH_FUNC_NAME%% defines an exported function.
    "BASH_": f"{_SHELL} (bash reads BASH_* itself: startup file, loadable builtins, functions)",
    # ld.so(8), and musl's loader: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT...
    "LD_": _LOADER,
    # glibc's unsecvars.h has MALLOC_TRACE (a file it writes); mallopt(3): MALLOC_*_ tunables.
    "MALLOC_": _LIBC,
    # locale(7): LC_ALL, LC_CTYPE...
    "LC_": _LOCALE,
    # python(1): PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONINSPECT, PYTHONUSERBASE,
    # PYTHONWARNINGS and PYTHONBREAKPOINT (both import modules)...
    "PYTHON": _INTERPRETER,
    # perlrun(1): PERL5LIB, PERL5OPT (-M), PERLLIB, PERL5DB (debugger code), PERLIO...
    "PERL": _INTERPRETER,
    # ruby(1): RUBYOPT (-r), RUBYLIB, RUBYPATH, RUBYSHELL, RUBY_*...
    "RUBY": _INTERPRETER,
    # lua(1): LUA_INIT runs code; LUA_PATH, LUA_CPATH...
    "LUA_": _INTERPRETER,
    # cargo(1): CARGO_HOME, CARGO_BUILD_RUSTC_WRAPPER and every config key as CARGO_*.
    "CARGO_": _INTERPRETER,
    # git(1): GIT_SSH_COMMAND, GIT_EXEC_PATH, GIT_CONFIG_* (any setting), GIT_DIR,
    # GIT_TEMPLATE_DIR (hooks), GIT_EXTERNAL_DIFF...
    "GIT_": f"{_CONFIG} (git runs commands its GIT_* variables name or configure)",
    # less(1): LESSOPEN runs an input preprocessor; LESS, LESSKEY...
    "LESS": "less runs the input filter LESSOPEN names and takes options from LESS",
    # config(5ssl): OPENSSL_CONF can load engines and providers (shared objects).
    "OPENSSL_": f"{_CONFIG} (OpenSSL loads engines and providers)",
    # pip(1): every option as PIP_* (PIP_INDEX_URL, PIP_CONFIG_FILE, PIP_TARGET...).
    "PIP_": f"{_CONFIG} (pip takes every option, index and config file from PIP_*)",
    # npm, yarn: config as variables (the lower-case npm_config_ is matched in any case).
    "YARN_": _CONFIG,
    "NPM_CONFIG_": _CONFIG,
}

# Suffixes (exact letter case) -> why: GIT_PAGER, SYSTEMD_PAGER, SUDO_ASKPASS, SSH_ASKPASS...
FORBIDDEN_SUFFIXES: dict[str, str] = {
    "_PAGER": _PROGRAM,
    "_EDITOR": _PROGRAM,
    "_ASKPASS": _PROGRAM,
    # Options variables of many tools (TAR_OPTIONS, JAVA_OPTIONS, MAVEN_OPTS, ANT_OPTS,
    # SBT_OPTS, GRADLE_OPTS, DOTNET_..._OPTIONS, NODE_OPTIONS...): they take command lines.
    "_OPTIONS": f"{_INTERPRETER} (a program takes command-line options from it)",
    "_OPTS": f"{_INTERPRETER} (a program takes command-line options from it)",
}

# Read in any letter case by the programs that use them, so matched in any letter case (in
# lower case here): npm-config(7) reads npm_config_* (script-shell, node-options...);
# Python's urllib takes any *_proxy, and curl and wget read http_proxy and the like.
FORBIDDEN_PREFIXES_ANY_CASE: dict[str, str] = {"npm_config_": _CONFIG}
FORBIDDEN_SUFFIXES_ANY_CASE: dict[str, str] = {"_proxy": _NETWORK}


def forbidden_reason(name: str) -> str | None:
    """Why a run may not set `name` (a short phrase), or None when it may."""
    if name in FORBIDDEN_NAMES:
        return FORBIDDEN_NAMES[name]
    for prefix, reason in FORBIDDEN_PREFIXES.items():
        if name.startswith(prefix):
            return reason
    for suffix, reason in FORBIDDEN_SUFFIXES.items():
        if name.endswith(suffix):
            return reason
    lower = name.lower()
    for prefix, reason in FORBIDDEN_PREFIXES_ANY_CASE.items():
        if lower.startswith(prefix):
            return reason
    for suffix, reason in FORBIDDEN_SUFFIXES_ANY_CASE.items():
        if lower.endswith(suffix):
            return reason
    return None


def _any_case(text: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in text)


def forbidden_pattern() -> str:
    """A regular expression (ECMA-262 and Python) that finds exactly the forbidden names, for the
    OpenAPI document. Names are [A-Za-z_][A-Za-z0-9_]*, so no character needs escaping."""
    parts = [
        "^(?:" + "|".join(sorted(FORBIDDEN_NAMES)) + ")$",
        "^(?:" + "|".join(sorted(FORBIDDEN_PREFIXES)) + ")",
        "(?:" + "|".join(sorted(FORBIDDEN_SUFFIXES)) + ")$",
        "^(?:" + "|".join(_any_case(p) for p in sorted(FORBIDDEN_PREFIXES_ANY_CASE)) + ")",
        "(?:" + "|".join(_any_case(s) for s in sorted(FORBIDDEN_SUFFIXES_ANY_CASE)) + ")$",
    ]
    return "|".join(parts)
