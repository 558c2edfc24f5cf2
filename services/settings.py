"""The one configuration: every setting is a field of `Settings`, read from `VDAG_*`
environment variables by pydantic-settings, with CLI flags as overrides. Defaults that
depend on the mode are written once, in `_mode_defaults`. Nothing else reads the environment."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "VDAG_"


def _comma_list(value: Any) -> Any:
    """VDAG_ALLOWED_VIDEO_DIRS=/a,/b: comma-separated in the environment, a sequence in code."""
    if isinstance(value, str):
        return tuple(v for v in (s.strip() for s in value.split(",")) if v)
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    mode: str = Field("embedded", pattern="^(embedded|pseudo|cluster)$")
    side: str = Field("cloud", pattern="^(cloud|edge)$")
    cloud_ip: str = "127.0.0.1"
    data_dir: Path = Field(Path("var"), description="SQLite file, logs, node profiles")
    broker_url: str = Field(None, description=(  # type: ignore[assignment]  (filled in by _mode_defaults)
        "Celery broker; default memory:// embedded, amqp://guest:guest@<cloud_ip>:5672// otherwise"))
    database_url: str = Field(None, description=(  # type: ignore[assignment]
        "SQLAlchemy URL of the job store; default sqlite:///<data_dir>/vdag.db"))
    node: str = Field(None, description=(  # type: ignore[assignment]
        "name of this node, its Celery queue is vdag.node.<node>; default cloud, or edge-<hostname> on an edge"))
    api_port: int = Field(5000, ge=0, le=65535, description="0 = any free port")
    video_port: int = Field(5100, ge=0, le=65535)
    service_port: int = Field(5500, ge=0, le=65535, description=(
        "the seed's service API (/get_service_list, /execute_task/<service>) on the cloud; 0 = any free port"))
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(None, description=(  # type: ignore[assignment]
        "origins a browser page may call the API from (comma-separated; \"*\" = any); "
        "default: any in embedded and pseudo mode, none in cluster mode"))
    allowed_video_dirs: Annotated[tuple[Path, ...], NoDecode] = Field(
        (Path("/usr/share/doc/opencv-doc/examples/data"), Path("var/videos"), Path("/tmp")),
        description="a job's file source must lie under one of these directories (comma-separated)",
    )
    allowed_url_schemes: Annotated[tuple[str, ...], NoDecode] = ("rtsp", "rtsps", "http", "https")
    api_process: bool = Field(True, description=(
        "serve the API and video ports from a process of their own (tracker.web.front): result polls "
        "and MJPEG streams answered there, other requests forwarded to the tracker core; false = one "
        "process. Needs a database both processes can open (not an in-memory SQLite)"))
    url_probe_timeout_s: float = Field(5.0, ge=0, le=60, description=(
        "a URL source must open and yield a frame within this long at submit, or the job is a 422; 0 = no probe"))
    api_token: str | None = Field(None, description="bearer token for mutating and /node routes; None = open")
    results_queue: str = Field("vdag.results", pattern=r"^[\w.\-]{1,200}$",
                               description="queue the last stage publishes to; one per cloud tracker")
    max_in_flight: int = Field(8, ge=1, le=1024, description="frames of one job in flight before the generator drops")
    reorder_wait_s: float = Field(2.0, gt=0, description="how long the aggregator waits for a missing frame")
    profile_every: int = Field(20, ge=0, le=10_000, description=(
        "every Nth frame also runs the golden config (source resolution, golden grade) to measure F1, where "
        "profiling segments do not score the detector; 0 = off"))
    profile_segment_every_s: float = Field(12.0, ge=0, le=3600, description=(
        "every this many seconds of video (the first three 3x as often), score candidate configs against "
        "the golden one on a short segment of consecutive source frames (frame-level F1, "
        "services/profiling.py), on idle capacity; 0 = off"))
    profile_segment_frames: int = Field(10, ge=2, le=64, description=(
        "golden-scored frames per profiling segment: consecutive source frames up to 10 fps, every "
        "Nth of a faster source (a segment of a 24 fps source is 28 frames, 1.2 s)"))
    profile_nice: int = Field(19, ge=0, le=19, description=(
        "niceness of the process that scores profiling segments: 19 = only what the frames leave idle"))
    profile_urgent_segments: int = Field(3, ge=1, le=10, description=(
        "a job's first this many segments are scored next and beside the frames, not on idle capacity "
        "only (the others wait while a frame runs): with one, Megamind.avi had 2 of its 7 segments scored "
        "in 60 s and the planner ran 360p from the second one, F1 0.83-0.84 against 0.87 for the one-time "
        "profile's 480p; with three, three in the first 16 s, 0.865-0.889 (bench/adaptive_real.py)"))
    profile_first_nice: int = Field(10, ge=0, le=19, description=(
        "its niceness while it scores a job's first segments: until they are scored the planner has "
        "little accuracy from the video (at 19 on a busy node the first one took 15-20 s for a few s of CPU)"))
    golden_grade: str = Field("m", pattern="^[nsmlx]$", description=(
        "YOLO grade of the golden config when profiling; the largest, x, is very slow on a CPU"))
    prefetch: int = Field(4, ge=1, le=256)
    device: str = Field("auto", description="auto | cpu | cuda:N")
    batch_window_ms: float = Field(10.0, ge=0, le=1000, description=(
        "how long a frame waits for frames of the same model from other tasks of its worker process "
        "(any job) to share one predict call; it only waits while other tasks headed for a detector run "
        "(a threads pool), never in a prefork child; 0 = every frame its own call. 4 ms gathered 2.6 of "
        "4 concurrent frames on a 2-core CPU, 10 ms 3.3 (bench/batching.py)"))
    max_batch: int = Field(8, ge=1, le=256, description="frames in one predict call at most")
    runtime: str = Field("auto", pattern="^(auto|pytorch|openvino|onnx|tensorrt)$", description=(
        "what a worker runs models in (services/runtimes.py): auto = OpenVINO on a CPU, TensorRT on CUDA "
        "when installed (else PyTorch FP16); models are exported once and cached beside their weights"))
    torch_threads: int | None = Field(None, ge=1, le=256, description=(
        "torch threads per worker process, kept in force after ultralytics' predictor setup resets them; "
        "default: every core but one, split over a prefork pool's processes (tasks.worker)"))
    warm_up_wait_s: float = Field(120.0, ge=0, description=(
        "at warm-up, how long a worker process waits for the first export of its model to the "
        "fastest runtime (past it, PyTorch serves meanwhile), and for its profiling child to load"))
    person_weights: str | None = Field(None, description="path of a trained person detector (.pt)")
    warm_up: bool = Field(True, description=(
        "each worker pool process loads and runs the person detector once before it takes tasks"))
    models_dir: Path | None = Field(Path("models"), description=(
        "the only place a job's `weights` param may name a .pt checkpoint, by bare file name "
        "(relative = to the worker's working directory; symlinks out of it are refused); "
        "None (VDAG_MODELS_DIR set empty) = jobs may not load their own checkpoints. "
        "Grades, ultralytics' own .yaml configs and person_weights are not affected"))

    _split_lists = field_validator("cors_origins", "allowed_video_dirs", "allowed_url_schemes",
                                   mode="before")(_comma_list)

    @field_validator("models_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # Path("") would be the cwd

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        """The defaults that depend on mode, side, cloud_ip or data_dir."""
        if not isinstance(data, dict):
            return data
        mode, side = data.get("mode") or "embedded", data.get("side") or "cloud"
        cloud_ip, data_dir = data.get("cloud_ip") or "127.0.0.1", data.get("data_dir") or "var"
        if data.get("broker_url") is None:
            data["broker_url"] = "memory://" if mode == "embedded" else f"amqp://guest:guest@{cloud_ip}:5672//"
        if data.get("database_url") is None:
            data["database_url"] = f"sqlite:///{Path(data_dir) / 'vdag.db'}"
        if data.get("node") is None:
            data["node"] = "cloud" if side == "cloud" else f"edge-{socket.gethostname()}"
        if data.get("cors_origins") is None:
            data["cors_origins"] = () if mode == "cluster" else ("*",)
        return data


def settings_from_env(**overrides: Any) -> Settings:
    """Settings from the VDAG_* environment; keyword overrides (CLI flags) win, None = not given."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
