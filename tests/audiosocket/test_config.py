"""Settings precedence: defaults < TOML < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiosocket.config import ConfigError, load_config


def test_defaults() -> None:
    cfg = load_config(environ={})
    assert (cfg.host, cfg.port, cfg.http_port, cfg.data_dir) == ("127.0.0.1", 9092, 8080, "./var")
    assert cfg.uuid_timeout_s == 5.0


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('port = 1000\napp = "record"\n[stt]\nmodel = "from-file"\nworkers = 3\n')
    env = {"AUDIOSOCKET_PORT": "2000", "AUDIOSOCKET_STT__WORKERS": "5"}
    cfg = load_config(toml, {"app": "echo", "port": None}, environ=env)
    assert cfg.port == 2000  # env over file; an unset flag overrides nothing
    assert cfg.app == "echo"  # flag over file
    assert cfg.stt.model == "from-file"
    assert cfg.stt.workers == 5


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("port = 'x'", "port"),
        ("nonsense = 1", "unknown setting"),
        ("[stt]\nbogus = 1", "stt.bogus"),
        ("log_format = 'xml'", "log_format"),
        ("port = 70000", "port"),
    ],
)
def test_clear_errors(tmp_path: Path, toml: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(f, environ={})


def test_public_http_needs_token() -> None:
    with pytest.raises(ConfigError, match="token"):
        load_config(overrides={"http_host": "0.0.0.0"}, environ={})
    cfg = load_config(overrides={"http_host": "0.0.0.0", "web.token": "s3cret"}, environ={})
    assert cfg.web.token == "s3cret"


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/file.toml", environ={})


def test_cluster_defaults_change_nothing() -> None:
    config = load_config(environ={})
    assert config.cluster.store == "" and config.cluster.nats == ""
    assert config.node == f"{config.host}:{config.port}"
    assert config.shared_path == config.data_path


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"AUDIOSOCKET_CLUSTER__STORE": "mysql://x/y"}, "cluster.store"),
        ({"AUDIOSOCKET_CLUSTER__NATS": "http://x"}, "cluster.nats"),
        ({"AUDIOSOCKET_CLUSTER__STT_REMOTE": "true"}, "cluster.stt_remote"),
        ({"AUDIOSOCKET_CLUSTER__JOB_LEASE_S": "0"}, "cluster.job_lease_s"),
    ],
)
def test_cluster_bad_settings_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(environ=env)


def test_cluster_settings_from_environment() -> None:
    config = load_config(environ={
        "AUDIOSOCKET_CLUSTER__STORE": "postgresql://u@h/db",
        "AUDIOSOCKET_CLUSTER__NATS": "nats://127.0.0.1:4222",
        "AUDIOSOCKET_CLUSTER__STT_REMOTE": "1",
        "AUDIOSOCKET_CLUSTER__NODE": "a:9092",
        "AUDIOSOCKET_CLUSTER__SHARED_DIR": "/srv/rec",
    })
    assert config.cluster.stt_remote is True
    assert config.node == "a:9092"
    assert str(config.shared_path) == "/srv/rec"
