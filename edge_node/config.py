"""The node's one typed configuration.

Every setting comes from ``EDGE_*`` environment variables (``__`` separates nesting, e.g.
``EDGE_MQTT__HOST``) or a settings file: ``.env`` in the working directory, or the file ``EDGE_ENV_FILE``
names (empty: none; the systemd unit sets it empty, since systemd already read its root-owned
``EnvironmentFile=``). A settings file inside the state directory is refused: the node can write there, so a
compromised node could make its own settings persist. Secrets may instead come from files:
``EDGE_MQTT__PASSWORD_FILE`` or systemd's ``$CREDENTIALS_DIRECTORY``. Components receive their own
sub-config, never the root.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edge_node.errors import ConfigError
from edge_node.mqtt.servers import Server, parse_servers
from edge_node.runtimes import Runtime
from edge_node.wire import Mode, PublishPolicy, reserved_reason
from edge_node.wire.watch import WatchRules

__all__ = [
    "ENV_FILE_VARIABLE",
    "AutoModeConfig",
    "CameraConfig",
    "DashboardConfig",
    "HaConfig",
    "HeartbeatConfig",
    "ModelConfig",
    "MqttConfig",
    "OtaConfig",
    "PublishConfig",
    "RecordConfig",
    "Settings",
    "SnapshotConfig",
    "SupervisorConfig",
    "WatchConfig",
    "cache_dir",
    "default_node_id",
    "load_settings",
    "setting_names",
    "state_dir",
]

ENV_FILE_VARIABLE = "EDGE_ENV_FILE"  # the settings file to read; not itself a setting
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_node_id() -> str:
    """The hostname, reduced to characters that are safe in an MQTT topic level."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "node"
    return name[:64]


def cache_dir() -> Path:
    """Where downloaded and built artefacts are cached (the demo bundle, checkpoints)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ghostpi"


def state_dir() -> Path:
    """Default state directory: systemd's ``$STATE_DIRECTORY`` or a per-user folder."""
    if env := os.environ.get("STATE_DIRECTORY"):
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ghostpi"


def _credential(name: str) -> str | None:
    """Read a secret from systemd's ``LoadCredential=`` directory, if the unit provides one."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    return path.read_text().strip() if path.is_file() else None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Section):
    """Broker connection. With no ``host`` (nor ``hosts``) the node starts an embedded broker (demo extra)."""

    host: str | None = None
    port: int = Field(1883, ge=1, le=65535)
    hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host:port,host:port,...: servers of a cluster to fail over between; replaces host and port",
    )
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str | None = None  # default: ghostpi-<node_id>
    keepalive: int = Field(30, ge=5, le=3600)
    connect_timeout: float = Field(10.0, gt=0)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False  # disables hostname checking: for lab use only
    reconnect_min: float = Field(0.5, gt=0)
    reconnect_max: float = Field(30.0, gt=0)
    max_control_bytes: int = Field(16384, ge=256)
    control_rate: float = Field(5.0, gt=0, description="control messages per second, bursts of 2x allowed")

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str], info: ValidationInfo) -> list[str]:
        parse_servers(value, info.data.get("port", 1883))  # ValueError names the bad item
        return value

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for mutual TLS, or neither")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self

    @property
    def configured(self) -> bool:
        """A broker is named (``host`` or ``hosts``); otherwise the node runs its embedded one."""
        return self.host is not None or bool(self.hosts)

    def servers(self, default_host: str = "localhost") -> tuple[Server, ...]:
        """The servers to try: ``hosts`` (ports default to ``port``), else ``host``:``port``."""
        if self.hosts:
            return parse_servers(self.hosts, self.port)
        return (Server(self.host or default_host, self.port),)

    def for_server(self, server: Server) -> MqttConfig:
        """This configuration for one server of the list (what a single connection attempt uses)."""
        return self.model_copy(update={"host": server.host, "port": server.port, "hosts": []})

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def resolved_password(self) -> str | None:
        """The password from the environment, a file, or a systemd credential named ``mqtt_password``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read EDGE_MQTT__PASSWORD_FILE {self.password_file}: {exc}") from exc
        return _credential("mqtt_password")


class CameraConfig(_Section):
    """Frame source. ``source`` is picamera2, a device index, a file, an rtsp:// URL, dir:<path>, demo or
    synthetic."""

    source: str = "demo"
    width: int = Field(640, ge=16, le=8192)
    height: int = Field(480, ge=16, le=8192)
    fps: float | None = Field(
        None, gt=0, le=1000, description="frame rate; unset: a video file's own rate, a camera's default, else 30"
    )
    at_end: Literal["loop", "stop", "exit"] = Field(
        "loop", description="at the end of a video file: play it again, stop capturing, or stop the node"
    )
    stall_timeout: float = Field(5.0, gt=0, description="seconds without a frame before the camera is 'stalled'")
    reopen_delay: float = Field(2.0, gt=0)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("camera source is empty; use demo, synthetic, picamera2, 0, dir:<path>, a file or a URL")
        if value.startswith("dir:") and len(value) == 4:
            raise ValueError("dir: needs a folder, e.g. dir:/srv/images")
        return value


class ModelConfig(_Section):
    """Which bundle to run and how. ``auto`` settings are decided on the device by measurement (docs/benchmarks.md)."""

    bundle: Path | None = None  # default: the cached demo bundle, built on first use
    runtime: Literal["auto"] | Runtime = Field(
        "auto", description="auto: every runtime the bundle has files for and this node has installed, measured"
    )
    precision: Literal["auto", "int8", "fp32"] = Field(
        "auto", description="auto: every precision the bundle has, measured; INT8 only if it passes its check"
    )
    threads: int | Literal["auto"] = Field(
        "auto", description="inference threads in all, shared among the workers; auto: the CPU cores usable"
    )
    workers: int | Literal["auto"] = Field(
        "auto", description="inference workers, each with its own sessions; auto: the split measured fastest"
    )
    top_k: int = Field(5, ge=1, le=20)
    spin: bool = Field(
        False,
        description="let ONNX Runtime's pool threads busy-wait between frames (its default); off, the node used about "
        "half the CPU per frame and delivered more frames on a loaded 2-core machine (docs/benchmarks.md)",
    )
    sessions: int = Field(
        1, ge=1, le=8, description="resolutions kept loaded; more makes mode switches instant, each costs RAM"
    )

    @field_validator("threads", "workers")
    @classmethod
    def _count(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("must be auto or a number from 1 to 64")
        return value


class AutoModeConfig(_Section):
    """The auto controller steps down below ``low_fps`` and up above ``high_fps``."""

    low_fps: float = Field(8.0, gt=0)
    high_fps: float = Field(15.0, gt=0)
    cooldown: float = Field(10.0, ge=0, description="seconds between two switches")
    window: float = Field(3.0, gt=0, description="seconds of FPS history a decision needs")

    @model_validator(mode="after")
    def _order(self) -> AutoModeConfig:
        if self.high_fps <= self.low_fps:
            raise ValueError(f"auto.high_fps ({self.high_fps}) must be above auto.low_fps ({self.low_fps})")
        return self


class SupervisorConfig(_Section):
    """How the node restarts its own pipeline and camera before it leaves it to systemd's watchdog."""

    stall_timeout: float = Field(
        10.0, gt=0, description="seconds without a processed frame, while the camera delivers, before a restart"
    )
    max_restarts: int = Field(3, ge=1, le=100, description="restarts within restart_window before giving up")
    restart_window: float = Field(600.0, gt=0)


class PublishConfig(_Section):
    policy: PublishPolicy = PublishPolicy.EVERY
    max_hz: float = Field(2.0, gt=0, le=1000)


class HeartbeatConfig(_Section):
    interval: float = Field(10.0, ge=0.5, le=3600)


class OtaConfig(_Section):
    """Over-the-air model updates; see docs/ota.md."""

    trusted_keys: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    allow_unsigned_models: bool = False
    allow_http: bool = False
    max_bundle_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    download_timeout: float = Field(30.0, gt=0, description="seconds without progress before a retry")
    download_attempts: int = Field(5, ge=1, le=50)
    health_frames: int = Field(20, ge=1)
    health_max_latency_ms: float = Field(1000.0, gt=0)
    health_timeout: float = Field(60.0, gt=0, description="seconds the new model has to serve health_frames")

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)


class HaConfig(_Section):
    """Home Assistant MQTT discovery (off by default)."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"


class SnapshotConfig(_Section):
    """On-demand JPEG snapshots of the latest frame (the ``snapshot`` command). Off by default: a camera
    image may show people, so sending one over MQTT is an explicit choice (docs/mqtt-api.md)."""

    enabled: bool = False
    max_bytes: int = Field(50_000, ge=4096, le=1_000_000, description="largest JPEG sent; quality and size shrink")
    max_width: int = Field(640, ge=64, le=4096, description="frames wider than this are scaled down first")


class WatchConfig(_Section):
    """Watch rules (docs/detections.md): ``EDGE_WATCH__RULES`` as JSON, and/or a JSON file of rules."""

    rules: WatchRules = Field(default_factory=list, description='JSON list of rules, e.g. [{"name": "cat", ...}]')
    rules_file: Path | None = Field(None, description="a JSON file with a list of rules, added to rules")


MAX_CHART_POINTS = 1000  # per node, in the dashboard's memory and in every full picture


class DashboardConfig(_Section):
    """``edge-node dashboard``: the web dashboard (dashboard extra); see docs/dashboard.md."""

    bind: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: Path | None = None
    view_requires_token: bool | None = Field(None, description="unset: no on a loopback bind, yes on any other")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="names browsers reach it by, beyond localhost, this machine and IPs"
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_http: bool = Field(False, description="serve plain HTTP on a non-loopback bind (the token in clear)")
    stale_after: float = Field(30.0, gt=0, description="seconds without heartbeat or prediction: 'stale'")
    history_seconds: float = Field(600.0, ge=10, le=86400, description="length of the fps/latency charts")
    history_interval: float = Field(2.0, ge=0.1, le=600, description="seconds between two chart points")
    push_interval: float = Field(0.25, ge=0.05, le=5, description="seconds between two batches to the browsers")
    events_kept: int = Field(10, ge=1, le=100, description="command results kept per node")
    detections_kept: int = Field(
        5000, ge=10, le=50_000, description="detections kept for the timeline (the earliest arrived go first)"
    )
    history: bool = Field(
        False,
        # the old name, from when only the timeline read the recorder, still works (_RENAMED)
        validation_alias=AliasChoices("history", "detections_history"),
        description="read the recorder's database (the one `edge-node history` reads: EDGE_RECORD__DSN or its "
        "SQLite file): the timeline reaches back as far as it does, the charts show 1 h, 24 h and 7 days",
    )
    history_refresh: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="seconds between two fetches of a recorder range a card shows: 1 h's (its buckets are 1 min); "
        "24 h and 7 days wait 5 times as long (12 and 84 min buckets)",
    )
    detection_thumbnail_bytes: int = Field(
        32_000_000, ge=0, le=1_000_000_000, description="bytes of detection snapshots kept (the oldest go first)"
    )
    max_clients: int = Field(32, ge=1, le=1000, description="browser streams open at once")
    max_nodes: int = Field(1000, ge=1, le=100_000, description="nodes tracked; messages of further nodes ignored")
    predictions: bool | None = Field(
        None,
        description="follow every prediction (each card's label); false: heartbeats and state only; unset: "
        "until the fleet is larger than large_fleet",
    )
    large_fleet: int = Field(
        500,
        ge=1,
        le=100_000,
        description="nodes beyond which predictions are dropped (unless set) and / opens the table",
    )
    write_timeout: float = Field(10.0, ge=0.5, le=300, description="seconds a browser may take to read one write")
    stream_connects_per_minute: int = Field(30, ge=1, le=10_000, description="per client address")
    token_failures_per_minute: int = Field(10, ge=1, le=1000, description="wrong tokens per client address")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("view_requires_token", mode="before")
    @classmethod
    def _unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # empty: decided by the bind

    @model_validator(mode="after")
    def _check(self) -> DashboardConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key (PEM files), or neither")
        if self.history_interval * 2 > self.history_seconds:
            raise ValueError("history_seconds must hold at least two history_interval points")
        if self.history_seconds / self.history_interval > MAX_CHART_POINTS:
            raise ValueError(
                f"history_seconds / history_interval is more than {MAX_CHART_POINTS} chart points per node; "
                "make the interval longer"
            )
        return self

    def resolved_token(self) -> str | None:
        """The operator token from the environment, a file, or a systemd credential named ``dashboard_token``."""
        if self.token is not None:
            value: str | None = self.token.get_secret_value()
        elif self.token_file is not None:
            try:
                value = self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read EDGE_DASHBOARD__TOKEN_FILE {self.token_file}: {exc}") from exc
        else:
            value = _credential("dashboard_token")
        value = value.strip() if value else None  # an empty EDGE_DASHBOARD__TOKEN= means "none"
        if value is not None and len(value) < 16:
            raise ConfigError("the dashboard token is shorter than 16 characters; use e.g. `openssl rand -hex 24`")
        return value or None


class RecordConfig(_Section):
    """``edge-node record`` and ``edge-node history`` (extra ``record``); see docs/history.md."""

    dsn: SecretStr | None = Field(
        None, description="PostgreSQL conninfo or URL (postgresql://...); unset: SQLite at path"
    )
    path: Path | None = Field(None, description="the SQLite file; default <state_dir>/history.db")
    nats_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="nats://host:port,...: read the fleet through NATS (queue group, durable consumer), not MQTT",
    )
    group: str = Field("record", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="recorders of one group share the load")
    name: str = Field(
        default_factory=default_node_id,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="this recorder: its heartbeat topic and its persistent MQTT session",
    )
    keep_days: int = Field(10, ge=1, le=3650, description="history older than this is dropped")
    batch_rows: int = Field(2000, ge=1, le=100_000, description="rows written per transaction at most")
    commit_interval: float = Field(1.0, gt=0, le=60, description="seconds a received row waits for its commit")
    max_queue: int = Field(200_000, ge=100, le=10_000_000, description="rows waiting; beyond it rows are dropped")
    heartbeat_interval: float = Field(10.0, ge=0.5, le=3600)
    session_expiry: int = Field(
        86400, ge=0, description="MQTT 5: seconds the broker keeps this recorder's QoS 1 messages while it is away"
    )
    protocol: Literal["3.1.1", "5"] = Field(
        "3.1.1",
        description="the recorder's MQTT version (EDGE_MQTT__PROTOCOL is not used): 3.1.1 costs paho less than half "
        "the CPU per message, and mosquitto, EMQX and HiveMQ share subscriptions at both",
    )
    shared: bool = Field(
        True, description="subscribe in the $share group; false for a broker without shared subscriptions"
    )

    @field_validator("nats_servers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)

    def resolved_dsn(self) -> str | None:
        return self.dsn.get_secret_value() if self.dsn is not None else None


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Root settings. Components get the sub-model they need."""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
    )

    node_id: str = Field(default_factory=default_node_id)
    topic_prefix: str = "ghostpi"
    mode: Mode = Mode.HIGH
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    state_dir: Path = Field(default_factory=state_dir)
    mqtt: MqttConfig = MqttConfig()
    camera: CameraConfig = CameraConfig()
    model: ModelConfig = ModelConfig()
    auto: AutoModeConfig = AutoModeConfig()
    publish: PublishConfig = PublishConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    ota: OtaConfig = OtaConfig()
    ha: HaConfig = HaConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    watch: WatchConfig = WatchConfig()
    dashboard: DashboardConfig = DashboardConfig()
    record: RecordConfig = RecordConfig()

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if value == "all" or not _NODE_ID.match(value):
            raise ValueError(
                f"node_id {value!r} is not usable in a topic: use 1-64 letters, digits, '-', '_' or '.', and not 'all'"
            )
        if (why := reserved_reason(value)) is not None:
            raise ValueError(f"node_id {value!r} is reserved: {why}; give the node another name")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(ch in value for ch in "+#") or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"topic_prefix {value!r} must be non-empty, without '+', '#' or a leading/trailing '/'")
        return value


def setting_names(model: type[BaseModel] = Settings, prefix: str = "EDGE_") -> dict[str, object]:
    """Every environment variable the settings accept, with its default."""
    out: dict[str, object] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= setting_names(ann, f"{prefix}{name.upper()}__")
        else:
            out[f"{prefix}{name.upper()}"] = None if info.default_factory is not None else info.default
    return out


# Settings renamed: the old name still works (the model takes it as an alias), so it is no typo.
_RENAMED = {"EDGE_DASHBOARD__DETECTIONS_HISTORY": "EDGE_DASHBOARD__HISTORY"}


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = setting_names() | {ENV_FILE_VARIABLE: None} | dict.fromkeys(_RENAMED)
    problems = []
    for key in sorted(k for k in environ if k.upper().startswith("EDGE_")):
        if key.upper() not in known:
            close = difflib.get_close_matches(key.upper(), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"  {key}: not a setting{hint}")
    return problems


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into one readable ConfigError.

    Unknown ``EDGE_*`` variables are errors too: a typo must not silently fall back to a default.
    """
    if problems := _unknown_variables(os.environ):
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    env_file = _settings_file(os.environ)
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = "__".join(str(part) for part in err["loc"]).upper()
            name = f"EDGE_{loc}" if loc else "settings"
            lines.append(f"  {name}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from exc


def _settings_file(environ: Mapping[str, str]) -> Path | None:
    """The settings file to read: ``EDGE_ENV_FILE`` (empty: none) or ``.env`` in the working directory, never
    one inside the state directory."""
    raw = environ.get(ENV_FILE_VARIABLE)
    if raw is not None and not raw.strip():
        return None
    path = Path(raw or ".env").expanduser()
    if not path.is_file():
        if raw:
            raise ConfigError(f"{ENV_FILE_VARIABLE}={raw}: no such file; set it to a settings file, or empty for none")
        return None
    state = Path(environ.get("EDGE_STATE_DIR") or state_dir()).expanduser().resolve()
    if (real := path.resolve()).is_relative_to(state):
        raise ConfigError(
            f"refusing the settings file {real}: it is inside the state directory {state}, which the node itself "
            "can write, so a compromised node could change its own settings there. Put the settings in a root-owned "
            f"file (under systemd: /etc/edge-node/edge-node.env, the unit's EnvironmentFile=) and delete {real}"
        )
    return path
