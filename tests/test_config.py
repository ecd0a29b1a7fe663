from __future__ import annotations

from pathlib import Path

import pytest

from edge_node.config import load_settings
from edge_node.errors import ConfigError
from edge_node.wire import Mode, PublishPolicy
from tests.support.paths import REPO


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("EDGE_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_usable() -> None:
    s = load_settings()
    assert s.topic_prefix == "ghostpi" and s.mode is Mode.HIGH
    assert s.camera.source == "demo" and (s.camera.width, s.camera.height) == (640, 480)
    assert s.mqtt.host is None and s.mqtt.port == 1883
    assert s.publish.policy is PublishPolicy.EVERY
    assert s.node_id  # the hostname


def test_environment_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_NODE_ID", "cam-01")
    monkeypatch.setenv("EDGE_MQTT__HOST", "broker.lan")
    monkeypatch.setenv("EDGE_MQTT__PORT", "8883")
    monkeypatch.setenv("EDGE_MODE", "auto")
    monkeypatch.setenv("EDGE_AUTO__LOW_FPS", "4")
    monkeypatch.setenv("EDGE_OTA__TRUSTED_KEYS", "/k/a.pub, /k/b.pub")
    s = load_settings()
    assert (s.node_id, s.mqtt.host, s.mqtt.port, s.mode) == ("cam-01", "broker.lan", 8883, Mode.AUTO)
    assert s.auto.low_fps == 4
    assert s.ota.trusted_keys == [Path("/k/a.pub"), Path("/k/b.pub")]


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("EDGE_NODE_ID=from-dotenv\nEDGE_CAMERA__FPS=12\n")
    s = load_settings()
    assert s.node_id == "from-dotenv" and s.camera.fps == 12


def test_edge_env_file_names_the_settings_file_or_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("EDGE_NODE_ID=from-dotenv\n")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "edge-node.env").write_text("EDGE_NODE_ID=from-etc\n")
    monkeypatch.setenv("EDGE_ENV_FILE", str(etc / "edge-node.env"))
    assert load_settings().node_id == "from-etc"
    monkeypatch.setenv("EDGE_ENV_FILE", "")  # what the systemd unit sets: no file at all
    assert load_settings().node_id != "from-dotenv"
    monkeypatch.setenv("EDGE_ENV_FILE", str(etc / "missing.env"))
    with pytest.raises(ConfigError, match=r"EDGE_ENV_FILE=.*missing\.env: no such file"):
        load_settings()


@pytest.mark.parametrize("how", ["working-directory", "EDGE_ENV_FILE"])
def test_a_settings_file_in_the_state_directory_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    """The node writes its state directory: settings read from there would let a compromised node make its
    own changes (say EDGE_OTA__ALLOW_UNSIGNED_MODELS=true) survive a restart."""
    state = tmp_path / "state"
    (state / "ota").mkdir(parents=True)
    planted = state / ("ota/x.env" if how == "EDGE_ENV_FILE" else ".env")
    planted.write_text("EDGE_OTA__ALLOW_UNSIGNED_MODELS=true\n")
    monkeypatch.setenv("STATE_DIRECTORY", str(state))  # as under systemd's StateDirectory=
    if how == "EDGE_ENV_FILE":
        monkeypatch.setenv("EDGE_ENV_FILE", str(planted))
    else:
        monkeypatch.chdir(state)
    with pytest.raises(ConfigError, match=r"inside the state directory .* root-owned file"):
        load_settings()


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("EDGE_MQTT__PORT", "70000", "EDGE_MQTT__PORT"),
        ("EDGE_MODE", "turbo", "EDGE_MODE"),
        ("EDGE_NODE_ID", "a/b", "not usable in a topic"),
        ("EDGE_NODE_ID", "all", "not usable in a topic"),
        ("EDGE_NODE_ID", "operator", "reserved: 'operator' is the broker identity of a tool"),
        ("EDGE_NODE_ID", "Dashboard", "reserved: 'dashboard' is the broker identity of a tool"),
        ("EDGE_NODE_ID", "homeassistant", "reserved"),
        ("EDGE_NODE_ID", "ALL", "reserved: 'all' addresses every node"),
        ("EDGE_TOPIC_PREFIX", "ghost/#", "EDGE_TOPIC_PREFIX"),
        ("EDGE_CAMERA__SOURCE", "dir:", "needs a folder"),
        ("EDGE_MQTT__PROTOCOL", "4", "EDGE_MQTT__PROTOCOL"),
        ("EDGE_MQTT__HOTS", "x", "did you mean EDGE_MQTT__HOST"),
        ("EDGE_UNKNOWN_THING", "1", "not a setting"),
    ],
)
def test_bad_values_give_one_readable_error(monkeypatch: pytest.MonkeyPatch, key: str, value: str, needle: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings()
    assert needle in str(info.value)


def test_watermarks_must_leave_a_hysteresis_band(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AUTO__LOW_FPS", "15")
    monkeypatch.setenv("EDGE_AUTO__HIGH_FPS", "10")
    with pytest.raises(ConfigError, match="high_fps"):
        load_settings()


def test_mutual_tls_needs_both_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MQTT__CERT_FILE", "/etc/c.pem")
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        load_settings()


def test_password_from_file_or_systemd_credential(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("EDGE_MQTT__PASSWORD_FILE", str(secret))
    assert load_settings().mqtt.resolved_password() == "s3cret"
    monkeypatch.delenv("EDGE_MQTT__PASSWORD_FILE")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_settings().mqtt.resolved_password() == "from-systemd"


def test_password_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MQTT__PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s) and s.mqtt.resolved_password() == "hunter2"


def test_env_example_documents_every_setting() -> None:
    """.env.example must list every EDGE_ variable the settings accept, and nothing else."""
    from edge_node.config import setting_names

    text = (REPO / ".env.example").read_text()
    documented = {
        line.lstrip("# ").split("=")[0] for line in text.splitlines() if line.lstrip("# ").startswith("EDGE_")
    }
    expected = set(setting_names())
    assert expected - documented == set(), "undocumented settings"
    assert documented - expected == set(), "documented settings that do not exist"


def test_model_spin_is_off_unless_set_and_must_be_a_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().model.spin is False
    monkeypatch.setenv("EDGE_MODEL__SPIN", "true")
    assert load_settings().model.spin is True
    monkeypatch.setenv("EDGE_MODEL__SPIN", "sometimes")
    with pytest.raises(ConfigError, match="EDGE_MODEL__SPIN: Input should be a valid boolean"):
        load_settings()


def test_dashboard_history_refresh_has_a_default_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().dashboard.history_refresh == 60.0
    monkeypatch.setenv("EDGE_DASHBOARD__HISTORY_REFRESH", "1")
    assert load_settings().dashboard.history_refresh == 1.0
    for bad in ("0.5", "3601", "soon"):
        monkeypatch.setenv("EDGE_DASHBOARD__HISTORY_REFRESH", bad)
        with pytest.raises(ConfigError, match="EDGE_DASHBOARD__HISTORY_REFRESH"):
            load_settings()
