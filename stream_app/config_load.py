"""The one loader of settings: file, environment and flags into the typed configs.

Precedence, lowest first: dataclass defaults < TOML file < `STREAM_APP_*`
environment < command-line flags. Nothing else in stream_app reads the
environment. The configs themselves (`stream_app.config`, `trainer.config`,
`core.config`, `serving.config`) check every field in `__post_init__`, so a bad
value fails, with a message naming the field and the fix, before any client is
created.

Environment names are `STREAM_APP_<FIELD>` for the shared Kafka settings
(`STREAM_APP_BOOTSTRAP_SERVERS`, `STREAM_APP_TOPIC_PREFIX`) and
`STREAM_APP_<SECTION>_<FIELD>` for the rest (`STREAM_APP_TRAINER_BATCH_MAX`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from stream_app.config import SECRET_PATTERN, ConfigError, KafkaConfig


def parse_kv(pairs: list[str] | None, what: str = "-X") -> dict[str, str]:
    """`["a=1", "b=2"]` -> `{"a": "1", "b": "2"}` (kcat's `-X key=value` habit)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            shown = "***" if SECRET_PATTERN.search(pair) else repr(pair)  # it may hold one
            raise ConfigError(f"{what} expects key=value, got {shown}")
        out[key.strip()] = value
    return out


def read_properties(path: Path) -> dict[str, str]:
    """A librdkafka settings file (`key=value` lines, `#` comments), like kcat -F."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM made the first key unknown
    except OSError as exc:
        raise ConfigError(f"cannot read --kafka-config {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--kafka-config {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    settings = parse_kv([ln for ln in lines if ln and not ln.startswith("#")], str(path))
    # `key = value`, the properties-file habit: librdkafka would keep the space in
    # string values (a user name or password with a leading blank).
    return {key: value.lstrip() for key, value in settings.items()}


def read_file(path: Path | None) -> dict[str, Any]:
    """The TOML config file as a dict of sections (empty when no file is given)."""
    if path is None:
        return {}
    try:
        raw = path.read_bytes()
        # A byte order mark (Windows editors save one) is invisible, and TOML refuses it
        # as "Invalid statement at line 1, column 1", which says nothing of what to fix.
        values = tomllib.loads(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from exc
    check_sections(values)
    return values


C = TypeVar("C")


def build(cls: type[C], section: str, file_values: Mapping[str, Any],
          env: Mapping[str, str], flags: Mapping[str, Any], env_prefix: str | None = None,
          *, derived: Mapping[str, Any] | None = None) -> C:
    """Build a frozen config `cls` from one file section, the env and the flags.

    Unknown keys in the file are errors (a typo must not be silently ignored);
    env strings are converted to the field's type; flags that are None are unset.
    `derived` are defaults computed from other settings (a group id from the
    topic prefix): above the dataclass's, below file, env and flags.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(file_values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(names))}")
    values: dict[str, Any] = {**(derived or {})}
    for name, value in file_values.items():
        values[name] = _file_value(value, hints[name], f"[{section}] {name}")
    prefix = f"STREAM_APP_{section.upper()}_" if env_prefix is None else env_prefix
    for name in names:
        raw = env.get(prefix + name.upper())
        if raw is not None:
            values[name] = _from_env(raw, hints[name], prefix + name.upper())
    values.update({k: v for k, v in flags.items() if v is not None and k in names})
    unknown_flags = {k for k, v in flags.items() if v is not None} - names
    if unknown_flags:
        raise ConfigError(f"unknown {section} setting(s): {', '.join(sorted(unknown_flags))}; "
                          f"known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        text = str(exc)  # the learner's own checks already name `learner.<key>`
        raise ConfigError(text if text.startswith(f"{section}.") else f"[{section}] {text}") \
            from exc


def _file_value(value: Any, hint: Any, where: str) -> Any:
    """A file value of the field's type: TOML has its own, and `restore = "false"` is a
    string (true), `batch_max = 10.5` a float: both must be refused, not coerced. An
    array for a pair (`adam_betas = [0.9, 0.999]`) becomes a tuple, checked per item."""
    kinds = _tuple_kinds(hint, len(value) if isinstance(value, list) else 0)
    if kinds is None:
        _check_type(value, hint, where)
        return value
    if not isinstance(value, list) or len(value) != len(kinds):
        raise ConfigError(f"{where} must be an array of {len(kinds)} values, got {value!r}")
    for kind, item in zip(kinds, value, strict=True):
        _check_type(item, kind, where)
    return tuple(value)


def _tuple_kinds(hint: Any, n: int) -> tuple[Any, ...] | None:
    """The item types of a `tuple[...]` field (`tuple[float, ...]` taken as `n` floats),
    or None for any other field."""
    if typing.get_origin(hint) is not tuple:
        return None
    kinds = typing.get_args(hint)
    return (kinds[0],) * n if len(kinds) == 2 and kinds[1] is Ellipsis else kinds


def _check_type(value: Any, hint: Any, where: str) -> None:
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kinds = {a for a in allowed if isinstance(a, type)}
    if not kinds or kinds & {tuple, list, dict, Path} and not isinstance(value, bool):
        return  # composite fields: the dataclass checks them
    ok = any(type(value) is kind or (kind is float and type(value) is int) for kind in kinds)
    if not ok:
        names = " or ".join(sorted(k.__name__ for k in kinds))
        raise ConfigError(f"{where} must be {names}, got {value!r}")


def from_text(cls: type[Any], name: str, raw: str, where: str) -> Any:
    """A setting given as text (env, `-L key=value`) converted to the field's type."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        return raw  # build() reports the unknown name with the list of known ones
    return _from_env(raw, hints[name], where)


def _from_env(raw: str, hint: Any, var: str) -> Any:
    items = raw.split(",")
    kinds = _tuple_kinds(hint, len(items))
    if kinds is not None:  # `0.9,0.999`: one item per element type
        if len(items) != len(kinds):
            raise ConfigError(f"{var}={raw!r} must be {len(kinds)} comma-separated values")
        try:
            return tuple(_from_env(item.strip(), kind, var) for kind, item in zip(kinds, items))
        except ConfigError as exc:
            kind_names = ",".join(k.__name__ for k in kinds)
            raise ConfigError(f"{var}={raw!r} is not a valid {kind_names}") from exc
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    target = base[0] if isinstance(base[0], type) else str
    try:
        if target is bool:
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if target in (int, float, str):
            return target(raw)
        if target is Path:
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid {target.__name__}") from exc
    return raw


def load_kafka(file_values: Mapping[str, Any], env: Mapping[str, str],
               flags: Mapping[str, Any], client: Mapping[str, str]) -> KafkaConfig:
    """The shared `[kafka]` section; librdkafka settings from `[kafka.client]`, file, -X."""
    section = _table(file_values.get("kafka", {}), "[kafka]")
    merged_client = _dotted(_table(section.pop("client", {}), "[kafka.client]"))
    merged_client.update(client)
    for key, where in OWN_CLIENT_SETTINGS.items():
        if key in merged_client:
            raise ConfigError(f"librdkafka setting {key} (in -X, --kafka-config or "
                              f"[kafka.client]) is set by stream_app: {where}")
    kafka = build(KafkaConfig, "kafka", section, env, flags, env_prefix="STREAM_APP_")
    return dataclasses.replace(kafka, client=merged_client)


_BROKERS = ("give the brokers with --bootstrap-servers, STREAM_APP_BOOTSTRAP_SERVERS or "
            "[kafka] bootstrap_servers")
OWN_CLIENT_SETTINGS = {
    "bootstrap.servers": _BROKERS,
    "metadata.broker.list": _BROKERS,
    "client.id": "each client is named after its role (trainer, scorer, replay, ...)",
    "group.id": "use --group-id or group_id in [trainer] / [scorer]",
    "transactional.id": "the trainer derives it from [trainer] group_id and instance_id",
    "isolation.level": "readers of the trainer's topics use read_committed, and the "
                       "trainer's restore asks the changelog's true end read_uncommitted",
}
"""librdkafka settings stream_app sets itself from its own options. Given as librdkafka
settings they would be refused as a conflict naming a default (bootstrap.servers),
or win silently under an alias (metadata.broker.list), or conflict with one of the
clients whatever their value (isolation.level: read_committed stopped the trainer's
restore): so they are refused here, with the reason or the option to use instead."""



def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table of settings, got {value!r}")
    return dict(value)


def _dotted(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """librdkafka keys from `[kafka.client]`: TOML reads `security.protocol = "SSL"` as a
    nested table, so nested keys are joined back with dots."""
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            joined = _dotted(value, f"{name}.")
            if joined.keys() & out.keys():  # `"linger.ms" = 1` beside `linger = {ms = 2}`
                raise ConfigError(f"[kafka.client] sets {sorted(joined.keys() & out.keys())} "
                                  "twice; keep one")
            out.update(joined)
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, int | str):
            text = str(value)
        else:  # a list or float became its Python text ("['PLAIN']"), silently
            raise ConfigError(f"[kafka.client] {name} = {value!r}: librdkafka settings are "
                              "strings, integers or booleans (a list is one string, "
                              'comma-separated: "a,b")')
        if "\0" in text:
            raise ConfigError(f"[kafka.client] {name} holds a NUL character")
        if name in out:
            raise ConfigError(f"[kafka.client] sets {name} twice; keep one")
        out[name] = text
    return out


SECTIONS = frozenset({"kafka", "trainer", "learner", "scorer"})
"""The config file's sections; any other top-level key is a typo."""


def check_sections(file_values: Mapping[str, Any]) -> None:
    """Refuse a top-level key that is no section (`[trainr]` must not be ignored)."""
    unknown = set(file_values) - SECTIONS
    if unknown:
        raise ConfigError(f"unknown section(s) or top-level key(s) in --config: "
                          f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(SECTIONS))}")
    for name, value in file_values.items():
        _table(value, f"[{name}]")


SHARED_ENV = frozenset({"STREAM_APP_BOOTSTRAP_SERVERS", "STREAM_APP_TOPIC_PREFIX",
                        "STREAM_APP_BROKER_SASL_PASSWORD", "STREAM_APP_CACHE_DIR"})
"""Variables outside the sections: the `[kafka]` fields, the broker's password, and the
cache of the broker jars (`make CACHE=DIR` sets it)."""

TEST_ENV_PREFIX = "STREAM_APP_TEST_"
"""The test suite's own variables (`STREAM_APP_TEST_DEVICE`): no command reads them."""


def check_environment(env: Mapping[str, str], sections: Mapping[str, type[Any]]) -> None:
    """Refuse a `STREAM_APP_*` variable no command reads, as a typo in the file is refused.

    `sections` are the ones this command builds; a variable of another section
    (`STREAM_APP_SCORER_*` seen by the trainer, in a shared environment) is left
    to the command that reads it, so each name is checked where it is used.
    """
    known = set(SHARED_ENV)
    for section, cls in sections.items():
        known |= {f"STREAM_APP_{section.upper()}_{f.name.upper()}"
                  for f in dataclasses.fields(cls)}
    others = tuple(f"STREAM_APP_{s.upper()}_" for s in SECTIONS - {"kafka", *sections})
    unknown = sorted(name for name in env if name.startswith("STREAM_APP_")
                     and name not in known and not name.startswith((TEST_ENV_PREFIX, *others)))
    if unknown:
        hints = [f"{name} (did you mean {match[0]}?)" if (match := difflib.get_close_matches(
            name, known, n=1, cutoff=0.8)) else name for name in unknown]
        raise ConfigError(f"unknown environment variable(s): {', '.join(hints)}; unset them, "
                          f"or see README, Configuration, for the known ones")


def environment() -> dict[str, str]:
    """The only read of the process environment: `STREAM_APP_*` and `KAFKA_HOME`."""
    return {k: v for k, v in os.environ.items() if k.startswith("STREAM_APP_") or k == "KAFKA_HOME"}
