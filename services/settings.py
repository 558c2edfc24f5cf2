"""The one place that reads the environment. Everything else receives a Settings."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_PREFIX = "VDAG_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str = Field("memory://", description="Celery broker: amqp://... in cluster mode, memory:// embedded")
    database_url: str = Field("sqlite:///var/vdag.db", description="SQLAlchemy URL of the job store")
    node: str = Field("cloud", description="name of this node; its Celery queue is vdag.node.<node>")
    side: str = Field("cloud", pattern="^(cloud|edge)$")
    mode: str = Field("embedded", pattern="^(embedded|pseudo|cluster)$")
    cloud_ip: str = "127.0.0.1"
    api_port: int = Field(5000, ge=0, le=65535, description="0 = any free port")
    video_port: int = Field(5100, ge=0, le=65535)
    service_port: int = Field(5500, ge=0, le=65535, description=(
        "the seed's service API (/get_service_list, /execute_task/<service>) on the cloud; 0 = any free port"))
    cors_origins: tuple[str, ...] | None = Field(None, description=(
        "origins a browser page may call the API from (VDAG_CORS_ORIGINS, comma-separated; \"*\" = any); "
        "default: any in embedded and pseudo mode, none in cluster mode"))
    data_dir: Path = Field(Path("var"), description="SQLite file, logs, bundled synthetic video")
    allowed_video_dirs: tuple[Path, ...] = Field(
        (Path("/usr/share/doc/opencv-doc/examples/data"), Path("var/videos"), Path("/tmp")),
        description="a job's file source must lie under one of these directories",
    )
    allowed_url_schemes: tuple[str, ...] = ("rtsp", "rtsps", "http", "https")
    api_token: str | None = Field(None, description="bearer token for mutating and /node routes; None = open")
    results_queue: str = Field("vdag.results", pattern=r"^[\w.\-]{1,200}$",
                               description="queue the last stage publishes to; one per cloud tracker")
    max_in_flight: int = Field(8, ge=1, le=1024, description="frames of one job in flight before the generator drops")
    reorder_wait_s: float = Field(2.0, gt=0, description="how long the aggregator waits for a missing frame")
    profile_every: int = Field(20, ge=0, le=10_000, description=(
        "every Nth frame also runs the golden config (source resolution, golden grade) to measure F1; 0 = off"))
    profile_segment_every_s: float = Field(12.0, ge=0, le=3600, description=(
        "every this many seconds of video (the first three 3x as often), score candidate configs against "
        "the golden one on a short segment of consecutive source frames (frame-level F1, "
        "services/profiling.py), on idle capacity; 0 = off"))
    profile_segment_frames: int = Field(10, ge=2, le=64, description="source frames per profiling segment")
    golden_grade: str = Field("m", pattern="^[nsmlx]$", description=(
        "YOLO grade of the golden config when profiling; the largest, x, is very slow on a CPU"))
    prefetch: int = Field(4, ge=1, le=256)
    device: str = Field("auto", description="auto | cpu | cuda:N")
    person_weights: str | None = Field(None, description="path of a trained person detector (.pt)")
    models_dir: Path | None = Field(Path("models"), description=(
        "the only place a job's `weights` param may name a .pt checkpoint, by bare file name "
        "(relative = to the worker's working directory; symlinks out of it are refused); "
        "None (VDAG_MODELS_DIR set empty) = jobs may not load their own checkpoints. "
        "Grades, ultralytics' own .yaml configs and person_weights are not affected"))

    @model_validator(mode="after")
    def _mode_defaults(self) -> "Settings":
        if self.cors_origins is None:
            object.__setattr__(self, "cors_origins", () if self.mode == "cluster" else ("*",))
        return self


def _split(value: str) -> tuple[str, ...]:
    return tuple(v for v in (s.strip() for s in value.split(",")) if v)


def settings_from_env(environ: os._Environ | dict | None = None, **overrides) -> Settings:
    """Build Settings from VDAG_* variables; keyword overrides win (CLI flags)."""
    env = os.environ if environ is None else environ
    values: dict = {}
    for name, field in Settings.model_fields.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name == "allowed_video_dirs":
            values[name] = tuple(Path(p) for p in _split(raw))
        elif name in ("allowed_url_schemes", "cors_origins"):
            values[name] = _split(raw)
        elif name == "models_dir":
            values[name] = Path(raw.strip()) if raw.strip() else None  # Path("") would be the cwd
        else:
            values[name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
