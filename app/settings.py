"""Service configuration: one frozen settings class, from flags, `CATVTON_*` variables, defaults.

Every field is also a flag of `python -m app` (kebab-case: `weights_dir` is `--weights-dir`), so
there is one list of options, one set of defaults and one place that validates them.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.access.limits import parse_rate_limit
from catvton.pipeline import parse_size
from catvton.previews import DEFAULT_PREVIEW_EVERY

MEBIBYTE = 1024 * 1024
# The demo's tiny networks are overhead-bound: one intra-op thread runs a step as fast as a team
# alone, and stays that fast beside other CPU work where the team slowed down up to 80x.
DEMO_TORCH_THREADS = 1


class Settings(BaseSettings):
    """Options of the try-on service. Flags beat environment variables, which beat defaults."""

    model_config = SettingsConfigDict(
        env_prefix="CATVTON_",
        frozen=True,
        cli_prog_name="python -m app",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
    )

    host: str = Field("0.0.0.0", description="interface to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    weights_dir: Path | None = Field(
        None,
        description="folder holding stable-diffusion-inpainting/, sd-vae-ft-mse/ and CatVTON/ "
        "(`python -m catvton download` fills it); unset: the hub ids below",
    )
    base_model: str | None = Field(None, description="hub id or folder of SD-1.5 inpainting")
    vae: str | None = Field(None, description="hub id or folder of the sd-vae-ft-mse VAE")
    catvton: str | None = Field(None, description="hub id or folder of the CatVTON weights")
    attention_version: str = Field(
        "mix-48k-1024",
        description="CatVTON weights: mix-48k-1024, vitonhd-16k-512 or dresscode-16k-512",
    )
    device: str | None = Field(None, description="torch device: cuda, cuda:1, cpu; unset: auto")
    dtype: Literal["fp16", "bf16", "fp32"] | None = Field(
        None, description="weights precision; unset: fp16 on CUDA, fp32 on the CPU"
    )
    size: str | None = Field(
        None,
        description="working size WIDTHxHEIGHT, multiples of 8; "
        "unset: 768x1024 (384x512 for the *-16k-512 weights)",
    )
    torch_threads: Literal["auto"] | PositiveInt = Field(
        "auto",
        description="torch's intra-op threads for the models; auto: 1 with --demo (the tiny "
        "networks gain nothing from more, and a spinning thread team is many times slower beside "
        "any other CPU work: scripts/benchmark_threads.py), else torch's default (one a core)",
    )
    masker_device: str | None = Field(None, description="AutoMasker device; unset: as --device")
    masker_dtype: Literal["fp16", "bf16", "fp32"] = Field(
        "fp32",
        description="AutoMasker precision; fp32 on every device as the reference runs it (a "
        "flipped label moves the mask); fp16 if you measured it as equal on your GPU",
    )
    queue_size: int = Field(4, ge=0, description="requests that may wait while one inference runs")
    queue_timeout: float = Field(
        300.0, gt=0, description="seconds a request may wait in the queue before it gets 503"
    )
    max_upload_mb: float = Field(20.0, gt=0, description="per-file upload cap in MiB")
    max_image_megapixels: float = Field(
        40.0, gt=0, description="pixel cap per image, checked before decoding (decompression bombs)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        ["*"], description="origins allowed by CORS (web clients): comma-separated or a JSON list"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    demo: bool = Field(
        False,
        description="serve tiny random weights, written at each start: to integrate, not to judge",
    )
    demo_dir: Path = Field(
        Path.home() / ".cache" / "catvton" / "demo-weights",
        description="where --demo writes its tiny weights",
    )

    # -- hostile clients: what one request may cost (issue 8) --
    upload_timeout: float = Field(
        120.0, gt=0, description="seconds a request body may take to arrive in whole (408 after)"
    )
    upload_idle_timeout: float = Field(
        20.0, gt=0, description="seconds an upload may send nothing before it gets 408"
    )
    max_jpeg_scans: int = Field(
        100, ge=1, description="scans a progressive JPEG may have (photos have about 10)"
    )
    decode_memory_mb: float = Field(
        512.0,
        gt=0,
        description="MiB that image decoding may use at once, over all requests; "
        "decodes beyond it wait their turn",
    )

    # -- try-on jobs and the result cache -----------------------------------------------------
    max_queued_jobs: int = Field(
        32, ge=1, description="jobs that may wait in the queue (POST /api/try-on/jobs; 503 beyond)"
    )
    job_ttl: float = Field(
        900.0, gt=0, description="seconds a finished job's record and result are kept"
    )
    job_store_mb: float = Field(
        512.0, gt=0, description="MiB of job results kept; the oldest finished are evicted first"
    )
    max_jobs: int = Field(
        1000, ge=1, description="job records kept; the oldest finished are evicted first"
    )
    max_jobs_per_client: int = Field(
        100,
        ge=1,
        description="finished job records kept per client; a client over it loses its own "
        "oldest finished jobs first",
    )
    preview_every: int = Field(
        DEFAULT_PREVIEW_EVERY,
        ge=0,
        description="jobs: a preview of the result every N denoising steps, and one at the last "
        "(GET /api/try-on/jobs/{jobId}/preview); 0 turns previews off",
    )
    cache_mb: float = Field(
        256.0, ge=0, description="MiB of the result cache for fixed seeds (LRU); 0 turns it off"
    )

    # -- stored images: upload once, try many (app/images) ----------------------------------------
    image_ttl: float = Field(
        3600.0, gt=0, description="seconds a stored image is kept after its last use"
    )
    image_store_mb: float = Field(
        1024.0,
        gt=0,
        description="MiB of stored images (fitted pixels and their masks); the least recently "
        "used are evicted first",
    )
    max_images_per_client: int = Field(
        50, ge=1, description="stored images per client; its own least recently used go first"
    )

    # -- access control and limits (app/access) ---------------------------------------------------
    api_keys_file: Path | None = Field(
        None,
        description="clients and their keys, one 'NAME KEY' or 'NAME sha256:HEX' a line; reloaded "
        "on SIGHUP and when the file changes; unset: no key needed",
    )
    metrics_public: bool = Field(
        False, description="serve /metrics without a key to any client (else loopback only)"
    )
    rate_limit: str | None = Field(
        None,
        description="try-ons per client (and, counted apart, stored-image uploads) in the "
        "limits notation, e.g. '30/minute;500/day' "
        "(in quotes: a shell ends the command at ;); unset: off",
    )
    max_active_per_client: int = Field(
        None,  # type: ignore[assignment]  # derived from max_queued_jobs (`derive_shares`)
        ge=0,
        description="queued + running try-ons and jobs per client (429 beyond); "
        "unset: a quarter of --max-queued-jobs (at least 1); 0: off",
    )
    max_streams_per_client: int = Field(
        8, ge=1, description="open job event streams per client (429 too_many_streams beyond)"
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="proxies whose X-Forwarded-For names the client: comma-separated IPs or "
        "networks, '*' for any, '' for none",
    )

    # -- observe: logs, warm-up, draining --------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines: text for people, json (one object a line) for shippers"
    )
    warm_up: Literal["auto", "on", "off"] = Field(
        "auto",
        description="one short inference after loading, before /health says ok "
        "(auto: on CUDA only, where the first call pays for lazy initialisation)",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="seconds after SIGTERM/SIGINT for the running and queued inferences to "
        "finish; what is left then fails with shutting_down",
    )

    # -- shared state (Ray Serve deployment, app/cluster) ------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis for the --rate-limit counters (they then outlast a restart and are "
        "shared by the processes using it), e.g. redis://127.0.0.1:6380/0; unset: in this "
        "process's memory. The cluster keeps its shared state there too (python -m app.cluster)",
    )

    @model_validator(mode="before")
    @classmethod
    def derive_shares(cls, data: Any) -> Any:
        """`--max-active-per-client` unset: a quarter of `--max-queued-jobs` (8 of the default
        32), so one client never holds more than a quarter of the jobs' places by default."""
        if isinstance(data, dict) and data.get("max_active_per_client") is None:
            queued = data.get("max_queued_jobs", cls.model_fields["max_queued_jobs"].default)
            # An invalid max_queued_jobs is left to its own error, which names it.
            with contextlib.suppress(TypeError, ValueError):
                data = {**data, "max_active_per_client": max(1, int(queued) // 4)}
        return data

    @field_validator("cors_origins", mode="before")
    @classmethod
    def split_origins(cls, value: Any) -> Any:
        """`CATVTON_CORS_ORIGINS=https://a.example,https://b.example`, or a JSON list."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("size")
    @classmethod
    def check_size(cls, value: str | None) -> str | None:
        """Refused at start-up, with the pipeline's own rule, rather than when the models load."""
        if value is not None:
            parse_size(value)
        return value

    @field_validator("rate_limit")
    @classmethod
    def check_rate_limit(cls, value: str | None) -> str | None:
        """Refused at start-up in the library's own parser, naming the flag."""
        if value is not None:
            parse_rate_limit(value)
        return value

    @property
    def working_size(self) -> tuple[int, int] | None:
        """`size` as (width, height), or None to let the pipeline pick its trained size."""
        return None if self.size is None else parse_size(self.size)

    @property
    def intra_op_threads(self) -> int | None:
        """`torch_threads` resolved: a count, or None to leave torch's default."""
        if self.torch_threads != "auto":
            return self.torch_threads
        return DEMO_TORCH_THREADS if self.demo else None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MEBIBYTE)

    @property
    def job_store_bytes(self) -> int:
        return int(self.job_store_mb * MEBIBYTE)

    @property
    def image_store_bytes(self) -> int:
        return int(self.image_store_mb * MEBIBYTE)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * MEBIBYTE)

    @property
    def max_image_pixels(self) -> int:
        return int(self.max_image_megapixels * 1_000_000)

    @property
    def decode_memory_bytes(self) -> int:
        return int(self.decode_memory_mb * MEBIBYTE)
