"""Project configuration: defaults, validation messages, precedence, profiles, secrets and models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from icefield import ConfigError, SecretError, load_project
from icefield.config import read_model
from icefield.config.secrets import redact, resolve

FILES_SOURCE = {"type": "files", "path": "landing/*.csv"}
TARGET = {"table": "shop.orders"}


def pipeline(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": dict(FILES_SOURCE), "target": dict(TARGET)}
    body.update(changes)
    return body


def config_error(root: Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_project(root, env=kwargs.pop("env", {}), **kwargs)
    return str(info.value)


# ------------------------------------------------------------------ defaults


def test_defaults_of_a_bare_project(make_project):
    root = make_project(project={"name": "bare"})
    project = load_project(root, env={})
    cfg = project.config
    assert cfg.name == "bare"
    assert cfg.catalog.type == "sql"
    assert cfg.catalog.name == "icefield"
    assert cfg.catalog.uri is None
    assert cfg.engine == "local"
    assert cfg.namespace == "default"
    assert cfg.batch_size == 100_000
    assert project.pipelines == {} and project.models == {} and project.profile is None
    assert project.catalog_uri() == f"sqlite:///{(root.resolve() / '.icefield' / 'catalog.db').as_posix()}"
    assert project.warehouse_uri() == (root.resolve() / ".icefield" / "warehouse").as_uri()


def test_empty_project_file_gives_defaults(tmp_path):
    (tmp_path / "icefield.yaml").write_text("", encoding="utf-8")
    assert load_project(tmp_path, env={}).config.name == "icefield"


def test_missing_project_file_is_refused_with_the_fix(tmp_path):
    msg = config_error(tmp_path)
    assert "icefield.yaml" in msg and "icefield init" in msg


def test_pipeline_defaults(make_project):
    project = load_project(make_project({"orders": pipeline()}), env={})
    pipe = project.pipeline("orders")
    assert pipe.target.mode == "append"
    assert pipe.target.keys == [] and pipe.checks == [] and pipe.batch_size is None
    assert pipe.source.format == "auto" and pipe.source.file_column == "_source_file"


def test_unknown_pipeline_name_lists_the_known_ones(make_project):
    project = load_project(make_project({"orders": pipeline()}), env={})
    with pytest.raises(ConfigError, match=r"'nope'.*known: orders"):
        project.pipeline("nope")


def test_two_files_with_the_same_pipeline_name_are_refused(make_project):
    root = make_project({"a": pipeline()})
    (root / "pipelines" / "b.yaml").write_text("name: a\nsource: {type: files, path: x}\ntarget: {table: s.t}\n")
    msg = config_error(root)
    assert "b.yaml" in msg and "'a'" in msg and "already used" in msg


# ------------------------------------------------------------------ unknown keys


def test_unknown_key_in_project_file_names_file_key_and_allowed_keys(make_project):
    root = make_project(project={"name": "x", "batchsize": 10})
    msg = config_error(root)
    assert str(root / "icefield.yaml") in msg
    assert "batchsize: unknown key" in msg
    assert "allowed keys here:" in msg
    for allowed in ("batch_size", "catalog", "warehouse", "namespace", "profiles"):
        assert allowed in msg


def test_unknown_nested_key_in_project_file(make_project):
    root = make_project(project={"catalog": {"url": "sqlite:///x.db"}})
    msg = config_error(root)
    assert str(root / "icefield.yaml") in msg
    assert "catalog.url: unknown key" in msg
    assert "allowed keys here: type, name, uri, warehouse, token, credential, leases, properties" in msg


@pytest.mark.parametrize(
    ("body", "path", "allowed"),
    [
        (pipeline(descripton="typo"), "descripton", ["name", "source", "target", "checks", "batch_size"]),
        (pipeline(target={**TARGET, "partitions": ["day(ts)"]}), "target.partitions", ["partition_by", "mode", "keys"]),
        (pipeline(source={**FILES_SOURCE, "glob": "*.csv"}), "source.glob", ["path", "format", "columns", "delimiter"]),
        (
            pipeline(source={"type": "sql", "url": "sqlite:///x.db", "table": "t", "cursr": "id"}),
            "source.cursr",
            ["url", "table", "schema", "query", "cursor", "initial_cursor"],
        ),
        (pipeline(checks=[{"range": {"column": "x", "minimum": 0}}]), "range.minimum", ["column", "min", "max"]),
    ],
    ids=["top", "target", "files-source", "sql-source", "check"],
)
def test_unknown_key_in_pipeline_file_names_file_key_and_allowed_keys(make_project, body, path, allowed):
    root = make_project({"orders": body})
    msg = config_error(root)
    assert str(root / "pipelines" / "orders.yaml") in msg
    assert f"{path}: unknown key" in msg
    hint = msg.split("allowed keys here:", 1)[1]
    for key in allowed:
        assert key in hint


# ------------------------------------------------------------------ bad values and missing keys


@pytest.mark.parametrize(
    ("body", "where", "value"),
    [
        (pipeline(target={**TARGET, "mode": "upsert"}), "target.mode", "'upsert'"),
        (pipeline(batch_size=-1), "batch_size", "-1"),
        (pipeline(batch_size="many"), "batch_size", "'many'"),
        (pipeline(target={"table": "orders"}), "target.table", "'orders'"),
        (pipeline(source={**FILES_SOURCE, "format": "xml"}), "source.format", "'xml'"),
        (pipeline(source={**FILES_SOURCE, "delimiter": ";;"}), "source.delimiter", "';;'"),
        (pipeline(source={"type": "ftp", "path": "x"}), "source", "'ftp'"),
    ],
    ids=["mode", "batch-size-negative", "batch-size-text", "table-unqualified", "format", "delimiter", "source-type"],
)
def test_bad_value_in_pipeline_names_key_and_value(make_project, body, where, value):
    root = make_project({"orders": body})
    msg = config_error(root)
    assert str(root / "pipelines" / "orders.yaml") in msg
    assert f"{where}:" in msg
    assert value in msg


@pytest.mark.parametrize(
    ("project", "where", "value"),
    [
        ({"batch_size": -1}, "batch_size", "-1"),
        ({"batch_size": 0}, "batch_size", "0"),
        ({"engine": "flink"}, "engine", "'flink'"),
        ({"catalog": {"type": "glue"}}, "catalog.type", "'glue'"),
    ],
)
def test_bad_value_in_project_file_names_key_and_value(make_project, project, where, value):
    root = make_project(project=project)
    msg = config_error(root)
    assert str(root / "icefield.yaml") in msg
    assert f"{where}:" in msg and value in msg


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({"source": FILES_SOURCE}, "target"),
        ({"target": TARGET}, "source"),
        (pipeline(source={"type": "files"}), "source.path"),
        (pipeline(source={"type": "sql", "table": "t"}), "source.url"),
        (pipeline(target={"mode": "append"}), "target.table"),
    ],
)
def test_missing_required_key_is_named(make_project, body, missing):
    msg = config_error(make_project({"orders": body}))
    assert f"{missing}: required key is missing" in msg


def test_source_without_type_says_which_types_exist(make_project):
    msg = config_error(make_project({"orders": pipeline(source={"path": "x"})}))
    assert "source.type: required key is missing" in msg
    assert "'sql'" in msg and "'files'" in msg


def test_sql_source_needs_exactly_one_of_table_or_query(make_project):
    body = pipeline(source={"type": "sql", "url": "sqlite:///x.db", "table": "t", "query": "select 1"})
    assert "exactly one of 'table' or 'query'" in config_error(make_project({"orders": body}))


def test_merge_without_keys_is_refused(make_project):
    msg = config_error(make_project({"orders": pipeline(target={**TARGET, "mode": "merge"})}))
    assert "target:" in msg and "'merge' needs 'keys'" in msg


def test_order_by_outside_merge_is_refused(make_project):
    msg = config_error(make_project({"orders": pipeline(target={**TARGET, "order_by": "ts"})}))
    assert "only apply to mode 'merge'" in msg


def test_check_of_unknown_kind_is_refused_with_the_known_kinds(make_project):
    body = pipeline(checks=[{"not_null": ["id"]}, {"positive": ["amount"]}])
    msg = config_error(make_project({"orders": body}))
    assert "checks[1]" in msg and "unknown check 'positive'" in msg
    for kind in ("accepted_values", "filter", "not_null", "range", "regex", "unique"):
        assert kind in msg


def test_check_with_two_kinds_in_one_item_is_refused(make_project):
    body = pipeline(checks=[{"not_null": ["id"], "unique": ["id"]}])
    assert "checks[0] must be a mapping with one key" in config_error(make_project({"orders": body}))


def test_regex_check_that_does_not_compile_is_refused(make_project):
    body = pipeline(checks=[{"regex": {"column": "sku", "pattern": "([A-Z"}}])
    msg = config_error(make_project({"orders": body}))
    assert "'([A-Z'" in msg and "not a valid regular expression" in msg


def test_checks_parse_into_typed_models(make_project):
    body = pipeline(
        checks=[
            {"not_null": ["id"]},
            {"unique": ["id"]},
            {"accepted_values": {"column": "status", "values": ["new", "paid"]}},
            {"range": {"column": "amount", "min": 0, "max": 1000}},
            {"regex": {"column": "sku", "pattern": "^[A-Z]{3}-\\d+$"}},
            {"filter": "amount > 0"},
        ]
    )
    checks = load_project(make_project({"orders": body}), env={}).pipeline("orders").checks
    assert [type(c).__name__ for c in checks] == [
        "NotNullCheck",
        "UniqueCheck",
        "AcceptedValuesCheck",
        "RangeCheck",
        "RegexCheck",
        "FilterRule",
    ]
    assert checks[3].range.min == 0 and checks[3].range.max == 1000


def test_invalid_yaml_names_the_file(make_project):
    root = make_project({"orders": pipeline()})
    (root / "pipelines" / "orders.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    msg = config_error(root)
    assert "orders.yaml" in msg and "not valid YAML" in msg


# ------------------------------------------------------------------ precedence: file < profile < env < explicit


def test_env_overrides_win_over_the_file(make_project):
    root = make_project(project={"batch_size": 1000, "catalog": {"uri": "sqlite:///from-file.db"}})
    env = {"ICEFIELD__CATALOG__URI": "sqlite:///from-env.db", "ICEFIELD__BATCH_SIZE": "5"}
    cfg = load_project(root, env=env).config
    assert cfg.catalog.uri == "sqlite:///from-env.db"
    assert cfg.batch_size == 5 and isinstance(cfg.batch_size, int)


def test_env_overrides_come_from_the_process_environment_by_default(make_project, monkeypatch):
    root = make_project(project={"batch_size": 1000})
    monkeypatch.setenv("ICEFIELD__BATCH_SIZE", "42")
    monkeypatch.setenv("ICEFIELD__CATALOG__NAME", "lake")
    cfg = load_project(root).config
    assert cfg.batch_size == 42
    assert cfg.catalog.name == "lake"


@pytest.mark.parametrize(
    ("var", "value", "attr"),
    [
        ("ICEFIELD__NAMESPACE", "2024", "namespace"),
        ("ICEFIELD__NAME", "yes", "name"),
        ("ICEFIELD__CATALOG__URI", "*weird-but-valid", "catalog.uri"),
        ("ICEFIELD__CATALOG__URI", "postgresql://u:p%23x@db:5432/catalog#frag", "catalog.uri"),
        ("ICEFIELD__WAREHOUSE", "s3://bucket/key: with colon", "warehouse"),
    ],
)
def test_env_override_of_a_text_setting_keeps_the_text(make_project, var, value, attr):
    """An environment value is text: it must not turn into a number, a boolean or a YAML error."""
    cfg: Any = load_project(make_project(), env={var: value}).config
    for part in attr.split("."):
        cfg = getattr(cfg, part)
    assert cfg == value


def test_env_override_of_a_mapping_takes_a_yaml_flow_mapping(make_project):
    env = {"ICEFIELD__CATALOG__PROPERTIES": '{"s3.endpoint": "http://127.0.0.1:7070", "client.region": "eu"}'}
    cfg = load_project(make_project(), env=env).config
    assert cfg.catalog.properties == {"s3.endpoint": "http://127.0.0.1:7070", "client.region": "eu"}


def test_env_override_with_a_bad_value_names_the_value(make_project):
    msg = config_error(make_project(), env={"ICEFIELD__BATCH_SIZE": "lots"})
    assert "batch_size" in msg and "'lots'" in msg


def test_env_override_with_an_unknown_key_is_refused(make_project):
    msg = config_error(make_project(), env={"ICEFIELD__CATALOG__URL": "sqlite:///x.db"})
    assert "catalog.url: unknown key" in msg


PROFILED = {
    "name": "p",
    "batch_size": 1000,
    "catalog": {"name": "lake", "uri": "sqlite:///dev.db", "properties": {"a": "1", "b": "2"}},
    "profiles": {
        "prod": {"catalog": {"uri": "postgresql://db/catalog", "properties": {"b": "20"}}, "batch_size": 50_000},
        "ci": {"batch_size": 10},
    },
}


def test_profile_from_env_var_deep_merges(make_project):
    project = load_project(make_project(project=PROFILED), env={"ICEFIELD_PROFILE": "prod"})
    cfg = project.config
    assert project.profile == "prod"
    assert cfg.catalog.uri == "postgresql://db/catalog"
    assert cfg.catalog.name == "lake"  # kept from the file: a profile merges, it does not replace
    assert cfg.catalog.properties == {"a": "1", "b": "20"}
    assert cfg.batch_size == 50_000


def test_profile_argument_wins_over_env_var(make_project):
    project = load_project(make_project(project=PROFILED), profile="ci", env={"ICEFIELD_PROFILE": "prod"})
    assert project.profile == "ci"
    assert project.config.batch_size == 10
    assert project.config.catalog.uri == "sqlite:///dev.db"


def test_env_override_wins_over_profile(make_project):
    env = {"ICEFIELD_PROFILE": "prod", "ICEFIELD__BATCH_SIZE": "7"}
    cfg = load_project(make_project(project=PROFILED), env=env).config
    assert cfg.batch_size == 7
    assert cfg.catalog.uri == "postgresql://db/catalog"


def test_unknown_profile_lists_the_known_ones(make_project):
    msg = config_error(make_project(project=PROFILED), profile="staging")
    assert "profiles.staging" in msg and "known: ci, prod" in msg


def test_explicit_overrides_win_over_env_and_profile(make_project):
    env = {"ICEFIELD_PROFILE": "prod", "ICEFIELD__BATCH_SIZE": "7", "ICEFIELD__CATALOG__URI": "sqlite:///env.db"}
    overrides = {"batch_size": 3, "catalog.uri": "sqlite:///explicit.db"}
    cfg = load_project(make_project(project=PROFILED), env=env, overrides=overrides).config
    assert cfg.batch_size == 3
    assert cfg.catalog.uri == "sqlite:///explicit.db"
    assert cfg.catalog.properties == {"a": "1", "b": "20"}


def test_explicit_override_is_validated_too(make_project):
    msg = config_error(make_project(), overrides={"batch_size": -5})
    assert "batch_size" in msg and "-5" in msg


# ------------------------------------------------------------------ secrets


def test_secret_references_stay_unresolved_in_the_loaded_config(make_project):
    root = make_project(project={"catalog": {"uri": "postgresql://app:${env:IF_TEST_UNSET_PW}@db/catalog"}})
    project = load_project(root, env={})  # no error: references are resolved at run time, not at load
    assert project.catalog_uri() == "postgresql://app:${env:IF_TEST_UNSET_PW}@db/catalog"


def test_env_reference_resolves(monkeypatch):
    monkeypatch.setenv("IF_TEST_PW_ENV", "s3cr3t-from-env")
    assert resolve("postgresql://app:${env:IF_TEST_PW_ENV}@db/x") == "postgresql://app:s3cr3t-from-env@db/x"


def test_file_reference_resolves_relative_to_base_dir_and_strips_the_newline(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("s3cr3t-from-file\n", encoding="utf-8")
    assert resolve("${file:secrets/pw}", base_dir=tmp_path) == "s3cr3t-from-file"
    assert resolve(f"pw=${{file:{tmp_path / 'secrets' / 'pw'}}}") == "pw=s3cr3t-from-file"


def test_several_references_in_one_value(tmp_path, monkeypatch):
    monkeypatch.setenv("IF_TEST_USER", "alice-user")
    (tmp_path / "pw").write_text("alice-password", encoding="utf-8")
    out = resolve("postgresql://${env:IF_TEST_USER}:${file:pw}@db/x", base_dir=tmp_path)
    assert out == "postgresql://alice-user:alice-password@db/x"


def test_text_without_references_is_unchanged():
    assert resolve("sqlite:///plain.db") == "sqlite:///plain.db"


def test_missing_env_var_names_the_reference_and_the_fix():
    with pytest.raises(SecretError) as info:
        resolve("x=${env:IF_TEST_NOT_SET}", where="icefield.yaml: catalog.uri")
    msg = str(info.value)
    assert "icefield.yaml: catalog.uri" in msg
    assert "${env:IF_TEST_NOT_SET}" in msg
    assert "export IF_TEST_NOT_SET=" in msg


def test_missing_file_names_the_reference_and_the_fix(tmp_path):
    with pytest.raises(SecretError) as info:
        resolve("${file:nope/pw.txt}", where="pipelines/a.yaml: source.url", base_dir=tmp_path)
    msg = str(info.value)
    assert "pipelines/a.yaml: source.url" in msg
    assert "${file:nope/pw.txt}" in msg
    assert "create the file or fix the path" in msg


def test_empty_reference_is_refused():
    with pytest.raises(SecretError, match=r"empty secret reference"):
        resolve("${env:}")


def test_secret_error_is_a_config_error():
    assert issubclass(SecretError, ConfigError)


def test_redact_removes_resolved_values(monkeypatch, tmp_path):
    monkeypatch.setenv("IF_TEST_REDACT_PW", "hunter2-redact-me")
    (tmp_path / "token").write_text("tok-0123456789-redact\n", encoding="utf-8")
    resolve("${env:IF_TEST_REDACT_PW}")
    resolve("${file:token}", base_dir=tmp_path)
    text = "connect failed: password hunter2-redact-me, token tok-0123456789-redact rejected"
    out = redact(text)
    assert "hunter2-redact-me" not in out and "tok-0123456789-redact" not in out
    assert out == "connect failed: password ***, token *** rejected"
    assert redact("nothing secret here") == "nothing secret here"


# ------------------------------------------------------------------ models


def write_model(root: Path, name: str, text: str) -> Path:
    (root / "models").mkdir(exist_ok=True)
    path = root / "models" / f"{name}.sql"
    path.write_text(text, encoding="utf-8")
    return path


def test_model_header_parses(make_project):
    root = make_project()
    sql = (
        "-- Daily revenue per day.\n"
        "-- target: shop.daily_revenue\n"
        "-- mode: overwrite\n"
        "\n"
        "select order_date, sum(amount) as revenue from shop.orders group by 1\n"
    )
    write_model(root, "daily_revenue", sql)
    model = load_project(root, env={}).models["daily_revenue"]
    assert model.name == "daily_revenue"
    assert model.target.table == "shop.daily_revenue"
    assert model.target.mode == "overwrite"
    assert model.sql == sql
    assert model.path.endswith("daily_revenue.sql")


def test_model_header_with_merge_keys(tmp_path):
    path = tmp_path / "m.sql"
    path.write_text("-- target: shop.customers_latest\n-- mode: merge\n-- keys: [customer_id]\nselect 1\n")
    model = read_model(path)
    assert model.target.mode == "merge" and model.target.keys == ["customer_id"]


@pytest.mark.parametrize(
    "text",
    ["select 1 as x\n", "-- just a comment\nselect 1\n", "select 1\n-- target: shop.late\n"],
    ids=["no-header", "comment-without-target", "target-after-sql"],
)
def test_model_without_header_is_refused(make_project, text):
    root = make_project()
    write_model(root, "bare", text)
    msg = config_error(root)
    assert "bare.sql" in msg and "-- target:" in msg


def test_model_with_bad_mode_names_file_and_value(make_project):
    root = make_project()
    write_model(root, "m", "-- target: shop.m\n-- mode: upsert\nselect 1\n")
    msg = config_error(root)
    assert "m.sql" in msg and "mode" in msg and "'upsert'" in msg


# ------------------------------------------------------------------ hardening (issue 13)


@pytest.mark.parametrize("password", ["p@ss:w/o#r%d?x", "CANARYPART1@LEAKEDTAIL77", "a b+c"])
def test_a_reference_in_a_url_userinfo_is_percent_quoted(monkeypatch, password):
    """F8: a password with `@` (or `: / # % ?`) substituted raw into a URL split it at the first `@`,
    and SQLAlchemy printed the tail as the host. Quoted, the URL parses back to the same password and
    host; both forms are redacted."""
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("IF_TEST_PW", password)
    url = resolve("postgresql+psycopg2://app:${env:IF_TEST_PW}@127.0.0.1:5432/shop")
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == ("app", password, "127.0.0.1", 5432, "shop")
    assert redact(url) == "postgresql+psycopg2://app:***@127.0.0.1:5432/shop"
    assert redact(parsed.render_as_string(hide_password=False)) == "postgresql+psycopg2://app:***@127.0.0.1:5432/shop"


def test_references_outside_the_userinfo_are_not_quoted(monkeypatch, tmp_path):
    """Only the user-info is quoted: a whole URL from a secret, a path, a host stay as they are; a
    `${file:/abs/path}` reference (holding `/`) in the user-info is quoted too."""
    monkeypatch.setenv("IF_TEST_URL", "postgresql://u:p%40w@db/x")
    monkeypatch.setenv("IF_TEST_DB", "dir/shop.db")
    (tmp_path / "pw").write_text("f@ile", encoding="utf-8")
    assert resolve("${env:IF_TEST_URL}") == "postgresql://u:p%40w@db/x"
    assert resolve("sqlite:///${env:IF_TEST_DB}") == "sqlite:///dir/shop.db"
    assert resolve("s3://bucket/${env:IF_TEST_DB}") == "s3://bucket/dir/shop.db"
    assert resolve(f"postgresql://u:${{file:{tmp_path / 'pw'}}}@db/x") == "postgresql://u:f%40ile@db/x"
    assert resolve("${env:IF_TEST_DB}@host") == "dir/shop.db@host"  # no scheme: not a URL


def _alias_bomb(levels: int) -> str:
    lines = ['x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nname: p\nsource: {{type: files, path: 'a/*.csv'}}\ntarget: {{table: a.b}}\nbatch_size: *x{levels - 1}\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_a_yaml_alias_bomb_is_refused_at_once(make_project, levels):
    """F16: 438 bytes of nested aliases made a 35 MB error message (seven levels) and hung the CLI; eight
    levels took 2.8 GB. Now refused at once, with a short message."""
    import time

    root = make_project()
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / "p.yaml").write_text(_alias_bomb(levels), encoding="utf-8")
    started = time.perf_counter()
    msg = config_error(root)
    assert time.perf_counter() - started < 5
    assert "p.yaml" in msg and "aliases" in msg and len(msg) < 1000


def test_a_few_aliases_still_work(make_project):
    root = make_project(project={"name": "p", "catalog": {"name": "lake", "properties": {"a": "1"}}})
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / "p.yaml").write_text(
        "name: p\nsource: &src {type: files, path: 'a/*.csv'}\ntarget: {table: a.b}\nchecks: [{not_null: &cols [id, v]}, {unique: *cols}]\n",
        encoding="utf-8",
    )
    project = load_project(root, env={})
    assert project.pipelines["p"].source.path == "a/*.csv"  # type: ignore[union-attr]


def test_a_huge_value_is_shown_bounded(make_project):
    """F16: the value of a wrong key was echoed whole (`got {value!r}`)."""
    root = make_project(pipelines={"p": pipeline(batch_size=[list(range(200)) for _ in range(200)])})
    msg = config_error(root)
    assert "p.yaml: batch_size" in msg and len(msg) < 2000


def test_an_env_override_error_names_the_variable_not_the_file(make_project):
    """F22: errors from ICEFIELD__... values were attributed to icefield.yaml; a value that may hold a
    secret (a URI, a property) is not printed."""
    msg = config_error(make_project(), env={"ICEFIELD__BATCH_SIZE": "lots"})
    assert "the environment variable ICEFIELD__BATCH_SIZE: batch_size" in msg and "'lots'" in msg
    assert "icefield.yaml" not in msg
    msg = config_error(make_project(), env={"ICEFIELD__CATALOG__URI": '{"not": "a string", "pw": "CANARY_env_91"}'})
    assert "the environment variable ICEFIELD__CATALOG__URI: catalog.uri" in msg
    assert "CANARY_env_91" not in msg and "not shown" in msg


def test_a_profile_from_the_environment_keeps_its_case(make_project):
    """F22: ICEFIELD__PROFILES__X__... was lower-cased, so --profile X found no profile X. The variable
    also reaches a profile of the file whatever its case."""
    env = {"ICEFIELD__PROFILES__CI__BATCH_SIZE": "7"}
    project = load_project(make_project(), profile="CI", env=env)
    assert project.profile == "CI" and project.config.batch_size == 7
    env = {"ICEFIELD__PROFILES__PROD__BATCH_SIZE": "9"}
    project = load_project(make_project(project=PROFILED), profile="prod", env=env)
    assert project.config.batch_size == 9
    assert project.config.catalog.uri == "postgresql://db/catalog"  # the rest of the file's profile
