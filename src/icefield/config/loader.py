"""Reading ``icefield.yaml``, ``pipelines/*.yaml`` and ``models/*.sql`` into typed config.

Precedence: defaults < file < profile < ``ICEFIELD__SECTION__KEY`` environment variables < explicit
arguments. Every error is a :class:`ConfigError` naming the file, the key, the value and the fix.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from icefield.config.models import ModelConfig, PipelineConfig, ProjectConfig, TargetConfig
from icefield.config.ownership import check_writers
from icefield.config.secrets import has_reference
from icefield.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

PROJECT_FILE = "icefield.yaml"
ENV_PREFIX = "ICEFIELD__"
STATE_DIR = ".icefield"


@dataclass(frozen=True)
class Project:
    """A loaded project: its folder, its settings, its pipelines and its SQL models."""

    root: Path
    config: ProjectConfig
    pipelines: dict[str, PipelineConfig] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    profile: str | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def catalog_uri(self) -> str:
        """The catalog's SQLAlchemy URL (secret references unresolved; a relative SQLite path is made
        absolute against the project folder when the catalog is opened, see :mod:`icefield.catalog`)."""
        if self.config.catalog.uri:
            return self.config.catalog.uri
        return f"sqlite:///{(self.state_dir / 'catalog.db').as_posix()}"

    def warehouse_uri(self) -> str:
        """The warehouse location: the URI of an object store (``s3://...``) as given, or a local folder
        (relative to the project folder) as a location every reader takes to that folder.

        Secret references (``${env:NAME}``, ``${file:PATH}``) are resolved. A local folder is a ``file://``
        URI when its path needs no escaping; otherwise (a space, ``%``, ``#``, non-ASCII...) it is the plain
        absolute path: pyiceberg and Hadoop take the path of a ``file://`` URI as it is written while
        pyarrow and other URI parsers decode it, so only a path that reads the same either way is
        written as a URI. Raises :class:`ConfigError` for an unresolvable reference."""
        path = self.warehouse_path()
        if path is None:
            return self._warehouse()
        return local_location(path)

    def warehouse_path(self) -> Path | None:
        """The warehouse's local folder (absolute, resolved), or None when it is an object store."""
        wh = self._warehouse()
        if wh.startswith("file:"):
            from urllib.parse import unquote, urlparse

            # A file URI is decoded, as the URI standard reads it.
            wh = unquote(urlparse(wh).path)
        elif "://" in wh:
            return None
        path = Path(wh).expanduser()
        if not path.is_absolute():
            path = self.root / path
        return path.resolve()

    def _warehouse(self) -> str:
        from icefield.config.secrets import resolve

        return resolve(self.config.warehouse, where=f"{self.root / PROJECT_FILE}: warehouse", base_dir=self.root).strip()

    def pipeline(self, name: str) -> PipelineConfig:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(
                f"no pipeline named {name!r} in {self.root / 'pipelines'} (known: {known}); "
                "check the name or add pipelines/<name>.yaml"
            ) from None


def local_location(path: Path) -> str:
    """The location of the local folder or file ``path`` (absolute) for table metadata: ``file://`` and the
    path when no character of it needs escaping in a URI, else the plain path (see
    :meth:`Project.warehouse_uri`)."""
    from urllib.parse import unquote

    uri = path.as_uri()
    return uri if unquote(uri) == uri else path.as_posix()


def find_project_root(start: Path | None = None) -> Path:
    """Return the nearest folder at or above ``start`` holding ``icefield.yaml``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    raise ConfigError(
        f"no {PROJECT_FILE} in {here} or any folder above it; run `icefield init` to create a project "
        "or pass --project DIR"
    )


def load_project(
    root: Path | str | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    engine_checks: bool = True,
) -> Project:
    """Load and validate a project.

    ``root`` defaults to the nearest folder holding ``icefield.yaml``; ``profile`` (or the environment
    variable ``ICEFIELD_PROFILE``) selects one of the file's ``profiles``; ``env`` defaults to
    ``os.environ`` and supplies ``ICEFIELD__SECTION__KEY`` overrides; ``overrides`` are explicit values
    (dotted keys) that win over everything. ``engine_checks=False`` leaves out the checks that load the
    data engine (Arrow compiling a ``regex`` pattern), for a scheduler parsing the project often; a run
    loads it with them. Raises :class:`ConfigError`.
    """
    from icefield.config.models import ENGINE_CHECKS

    token = ENGINE_CHECKS.set(engine_checks)
    try:
        return _load(root, profile, env, overrides)
    finally:
        ENGINE_CHECKS.reset(token)


def _load(root: Path | str | None, profile: str | None, env: Mapping[str, str] | None, overrides: Mapping[str, Any] | None) -> Project:
    env = os.environ if env is None else env
    root_path = find_project_root() if root is None else Path(root).resolve()
    project_file = root_path / PROJECT_FILE
    if not project_file.is_file():
        raise ConfigError(f"{project_file} does not exist; run `icefield init {root_path}` to create it")
    raw = _read_yaml(project_file)
    overridden = _env_overrides(env, raw)
    # ICEFIELD__PROFILES__<NAME>__... change a profile before it is picked; the others win over it.
    sources: dict[tuple[str, ...], str] = {}
    for path, var, value in overridden:
        if path[0] == "profiles":
            _set_path(raw, list(path), _env_value(value))
            sources[path] = var
    profile = profile or env.get("ICEFIELD_PROFILE") or None
    if profile:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(
                f"{project_file}: profiles.{profile}: no such profile (known: {known}); "
                f"add it under 'profiles:' or pick another"
            )
        raw = _deep_merge(raw, profiles[profile] or {})
        sources.update({path[2:]: var for path, var in list(sources.items()) if path[:2] == ("profiles", profile) and len(path) > 2})
    for path, var, value in overridden:
        if path[0] != "profiles":
            _set_path(raw, list(path), _env_value(value))
            sources[path] = var
    for dotted, value in (overrides or {}).items():
        keys = str(dotted).split(".")
        _set_path(raw, keys, value)
        sources = {p: v for p, v in sources.items() if p[: len(keys)] != tuple(keys)}
    config = _validate(ProjectConfig, raw, project_file, sources)

    pipelines: dict[str, PipelineConfig] = {}
    pipe_files: dict[str, Path] = {}
    for pipe_file in sorted((root_path / "pipelines").glob("*.y*ml")):
        pipe = _validate(PipelineConfig, _read_yaml(pipe_file), pipe_file)
        pipe = _with_scheduling_defaults(pipe, config, pipe_file)
        _check_window(pipe, pipe_file)
        if pipe.name in pipelines:
            raise ConfigError(f"{pipe_file}: name: {pipe.name!r} is already used by another pipeline file; rename one")
        pipelines[pipe.name] = pipe
        pipe_files[pipe.name] = pipe_file
    models: dict[str, ModelConfig] = {}
    for model_file in sorted((root_path / "models").glob("*.sql")):
        model = read_model(model_file)
        models[model.name] = model
    check_writers(
        [
            *((f"pipeline {p.name}", pipe_files[p.name], p.target.table, p.target.shared) for p in pipelines.values()),
            *((f"model {m.name}", Path(m.path), m.target.table, m.target.shared) for m in models.values()),
        ]
    )
    return Project(root=root_path, config=config, pipelines=pipelines, models=models, profile=profile)


def _with_scheduling_defaults(pipe: PipelineConfig, config: ProjectConfig, pipe_file: Path) -> PipelineConfig:
    """``pipe`` with the project's ``scheduling`` defaults under its own keys (see
    :func:`icefield.config.scheduling.merge_scheduling`)."""
    from icefield.config.scheduling import merge_scheduling

    try:
        merged = merge_scheduling(config.scheduling, pipe.scheduling)
    except ValueError as e:
        inherited = f" (with the defaults of {PROJECT_FILE}'s scheduling)" if config.scheduling.model_fields_set else ""
        raise ConfigError(f"{pipe_file}: scheduling{inherited}: {e} (got {pipe.scheduling.model_dump(exclude_unset=True)!r})") from None
    return pipe.model_copy(update={"scheduling": merged})


WINDOW_SOURCES = ("sql", "files")
"""Source types a window backfill can re-read by date (a stream or a change log cannot be read by a column)."""


def _check_window(pipe: PipelineConfig, pipe_file: Path) -> None:
    """Refuse a ``window:`` the pipeline could never run: a source that cannot be read by date, a target
    whose rows a window cannot replace."""
    if pipe.window is None:
        return
    got = f"(got window: {pipe.window.model_dump()!r})"
    if pipe.source.type not in WINDOW_SOURCES:
        raise ConfigError(
            f"{pipe_file}: window: a {pipe.source.type} source cannot be read again by date: a backfill by window "
            f"re-reads a sql or files source {got}; remove the window key (replay a {pipe.source.type} source from "
            "its retained offsets or files instead)"
        )
    if pipe.target.mode != "append":
        raise ConfigError(
            f"{pipe_file}: window: a window backfill replaces the window's rows of an append target, and "
            f"target.mode is {pipe.target.mode!r} {got}; use target.mode append, or remove the window key"
        )


def read_model(path: Path) -> ModelConfig:
    """Read a SQL model. Its leading ``-- key: value`` comment lines configure the target, e.g.::

        -- target: shop.daily_revenue
        -- mode: overwrite
        select ...
    """
    text = path.read_text(encoding="utf-8")
    header: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        header.append(stripped[2:].strip())
    try:
        meta = yaml.safe_load("\n".join(h for h in header if ":" in h)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: the '-- key: value' header is not valid YAML: {e}") from e
    if not isinstance(meta, dict) or "target" not in meta:
        raise ConfigError(
            f"{path}: a model starts with a header naming its table, e.g. '-- target: shop.daily_revenue' "
            "and '-- mode: overwrite'"
        )
    meta = dict(meta)
    target_raw = {"table": meta.pop("target"), **meta}
    target = _validate(TargetConfig, target_raw, path)
    return ModelConfig(name=path.stem, sql=text, target=target, path=str(path))


def _env_overrides(env: Mapping[str, str], raw: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str, str]]:
    """The ``ICEFIELD__SECTION__KEY`` variables of ``env`` as (key path, variable name, value). Keys are
    lower-cased, except a profile's name: it names the file's profile of that name in any case, else it
    keeps the variable's case (``ICEFIELD__PROFILES__CI__...`` with ``--profile CI``)."""
    profiles = raw.get("profiles") if isinstance(raw.get("profiles"), Mapping) else {}
    out = []
    for key, value in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or len(key) <= len(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].split("__")
        path = [p.lower() for p in parts]
        if path[0] == "profiles" and len(parts) > 1:
            same = [str(name) for name in profiles or {} if str(name).lower() == parts[1].lower()]
            path[1] = same[0] if len(same) == 1 else parts[1]
        out.append((tuple(path), key, value))
    return out


def _env_value(value: str) -> Any:
    """An environment value is text; pydantic turns ``"5"`` into 5 where the field is a number. Only a
    YAML flow collection (``{...}`` or ``[...]``) is parsed, so that ``2024``, ``yes`` or ``*x`` stay
    the text they are for text settings."""
    if value.lstrip().startswith(("{", "[")):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


ALIAS_BUDGET = 10_000
"""Most YAML nodes that ``*aliases`` may add to a project file once expanded. Anchors and aliases that
share a few settings stay far below; a file whose aliases multiply (an "alias bomb": 438 bytes that
expand to millions of values) is refused before anything reads it."""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from e
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            added = _expanded_size(node) - _distinct_size(node)
            if added > ALIAS_BUDGET:
                raise ConfigError(
                    f"{path}: its YAML aliases (*name) expand to more than {ALIAS_BUDGET:,} extra values; "
                    "write the values out instead of nesting aliases"
                )
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        # A cron expression written without quotes (schedule: */15 * * * *) reads as a YAML alias.
        hint = (
            "\nA value that starts with '*' (such as a cron expression) must be quoted: schedule: \"*/15 * * * *\""
            if "alias" in str(getattr(e, "context", "") or "") or "alias" in str(getattr(e, "problem", "") or "")
            else ""
        )
        raise ConfigError(f"{path}: not valid YAML: {e}{hint}") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: the YAML nests too deeply (or an alias refers to itself); flatten it") from e
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys, got {type(data).__name__}")
    return data


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes the document holds once every alias is expanded (counted, not built: each shared
    node is sized once). A node that contains itself counts as unbounded."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in _children(node)), 2**62)
            continue
        if key in sizes:
            continue
        if key in on_path:
            return 2**62  # an alias to an enclosing node: endless once expanded
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                return 2**62
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _distinct_size(root: yaml.Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(_children(node))
    return len(seen)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_path(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _validate(model: type[M], raw: dict[str, Any], path: Path, sources: Mapping[tuple[str, ...], str] | None = None) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, path, model, sources)) from None


MAX_ERRORS = 20
"""Most problems one configuration error lists (the count of the rest follows)."""

_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxlevel = 3
_VALUE_REPR.maxtuple = _VALUE_REPR.maxlist = _VALUE_REPR.maxdict = _VALUE_REPR.maxset = 6
_VALUE_REPR.maxstring = _VALUE_REPR.maxother = 120
_SECRET_KEY = re.compile(r"ur[il]|dsn|propert|passw|secret|token|credential|key|auth|sasl", re.IGNORECASE)


_SECRET_VALUE_KEY = re.compile(r"passw|secret|token|credential", re.IGNORECASE)


def _shown(value: Any) -> str:
    """``repr(value)`` bounded in length and depth, however big the value is; in a mapping (a whole section
    refused by a check across its keys), the values of keys that hold secrets (a token, a credential, a
    password) are masked unless they are references (``${env:...}``), which hold none."""
    if isinstance(value, dict):
        value = {
            k: "***" if isinstance(k, str) and _SECRET_VALUE_KEY.search(k) and isinstance(v, str) and not has_reference(v) else v
            for k, v in value.items()
        }
    return _VALUE_REPR.repr(value)


def format_validation_error(
    e: ValidationError, path: Path, model: type[BaseModel], sources: Mapping[tuple[str, ...], str] | None = None
) -> str:
    """Turn pydantic's errors into one message per problem: file (or environment variable), key, value,
    what to do. At most :data:`MAX_ERRORS` problems, each value shown bounded; a value that came from an
    ``ICEFIELD__...`` variable is not shown where the key may hold a secret (URLs, properties)."""
    lines = []
    for err in e.errors()[:MAX_ERRORS]:
        keys = tuple(str(p) for p in err["loc"] if not _is_union_tag(p))
        loc = ".".join(keys) or "(top level)"
        kind = err["type"]
        value = err.get("input")
        var = next((v for k, v in sorted((sources or {}).items(), key=lambda kv: -len(kv[0])) if keys[: len(k)] == k), None)
        where = f"{path}" if var is None else f"the environment variable {var}"
        got = f"got {_shown(value)}"
        if var is not None and _SECRET_KEY.search(loc):
            got = "its value is not shown: it may hold a secret"
        if kind == "extra_forbidden":
            parent = _parent_model_fields(model, err["loc"][:-1])
            hint = f"; allowed keys here: {', '.join(parent)}" if parent else ""
            lines.append(f"{where}: {loc}: unknown key{hint}. Remove it or fix its spelling")
        elif kind == "missing":
            lines.append(f"{where}: {loc}: required key is missing. Add it")
        elif kind == "union_tag_not_found":
            tags = sorted({t for m in _models_at(model, err["loc"]) for t in _type_tags(m)})
            choices = f" (one of {', '.join(repr(t) for t in tags)})" if tags else ""
            lines.append(f"{where}: {loc}.type: required key is missing. Add it{choices}")
        elif kind == "union_tag_invalid":
            lines.append(f"{where}: {loc}: {_bounded(err['msg'])}")
        else:
            msg = _bounded(err["msg"].removeprefix("Value error, "))
            lines.append(f"{where}: {loc}: {msg} ({got})")
    if e.error_count() > MAX_ERRORS:
        lines.append(f"{path}: ... and {e.error_count() - MAX_ERRORS} more problems")
    return "\n".join(lines)


def _bounded(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in ("sql", "files", "http") or part.endswith("Check") or part.endswith("Rule"))


def _parent_model_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (pydantic's error location, union tags included), or [] if unsure."""
    models = _models_at(model, loc)
    if len(models) != 1:
        return []
    return [f.alias or name for name, f in models[0].model_fields.items()]


def _models_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The config models that can sit at ``loc``: fields are followed through optionals, lists and
    unions; a union tag (``files``, ``RangeCheck``) picks its member."""
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the candidates already are the item types
        following: list[type[BaseModel]] = []
        for current in candidates:
            f = current.model_fields.get(str(part))
            if f is None:
                f = next((fi for fi in current.model_fields.values() if fi.alias == part), None)
            if f is not None:
                following.extend(_leaf_models(f.annotation))
            elif part == current.__name__ or part in _type_tags(current):
                following.append(current)
        candidates = list(dict.fromkeys(following))
        if not candidates:
            return []
    return candidates


def _type_tags(model: type[BaseModel]) -> set[str]:
    """The values of a model's ``type: Literal[...]`` field (its tag in a discriminated union)."""
    import typing

    tags: set[str] = set()
    f = model.model_fields.get("type")
    if f is not None and typing.get_origin(f.annotation) is typing.Literal:
        tags.update(str(a) for a in typing.get_args(f.annotation))
    return tags


def _leaf_models(annotation: Any) -> list[type[BaseModel]]:
    import typing

    if isinstance(annotation, type):
        return [annotation] if issubclass(annotation, BaseModel) else []
    if typing.get_origin(annotation) is dict:
        args = typing.get_args(annotation)
        return _leaf_models(args[1]) if len(args) == 2 else []
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_leaf_models(arg))
    return out
