"""Recipe sections: clusters, splits, imagery (catalogs, sensors, time, grid), audio, fMoW, output.

The sampler sections live with their samplers (`geoprep.planning.samplers`): each is the
model of its section and the code that draws its locations.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:59] + "…")


Resampling = Literal["nearest", "bilinear", "cubic", "average", "lanczos", "mode"]


#: Every recipe model: unknown keys are errors, and no float may be inf or nan (a distance of
#: .inf would make the samplers loop or overflow).
RECIPE_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Spec(BaseModel):
    model_config = RECIPE_MODEL_CONFIG


class ClusterConfig(BaseModel):
    """GASSL's geo-labels: K clusters of the locations' positions."""

    model_config = RECIPE_MODEL_CONFIG

    k: int = Field(100, gt=0, description="number of clusters (fewer if there are fewer locations)")
    n_init: int = Field(4, gt=0, description="k-means restarts; the best inertia wins")


class SplitConfig(BaseModel):
    """Fractions of locations per split; whole clusters go to one split, so no spatial leakage."""

    model_config = RECIPE_MODEL_CONFIG

    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class CatalogSpec(_Spec):
    """Where items come from: a STAC API, stac-geoparquet files, or a static catalog."""

    kind: Literal["stac-api", "geoparquet", "static"] = "stac-api"
    url: str = Field(
        description="STAC API root; geoparquet: file/URL, '{collection}' is replaced by the "
        "collection id; static: path or URL of catalog.json"
    )
    provider: Literal["planetary-computer", "none"] = Field(
        "none", description="'planetary-computer' signs asset hrefs with SAS tokens"
    )
    page_size: int = Field(100, gt=0, le=1000, description="items per STAC API page")

    @model_validator(mode="after")
    def _url_form(self) -> CatalogSpec:
        url = self.url.strip()
        if self.kind == "stac-api" and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url):
            raise ValueError(f"url {_short(url)}: a STAC API is an http(s):// URL")
        if not url or any(c.isspace() and c != " " for c in url) or "\0" in url:
            raise ValueError(f"url {_short(url)}: expected a path or URL")
        return self


class SensorSpec(_Spec):
    """One sensor of a sample: a collection, the assets to read, and what makes a scene usable."""

    catalog: str = Field(description="name of an entry under imagery.catalogs")
    collection: str = Field(description="STAC collection id, e.g. sentinel-2-l2a")
    assets: list[str] = Field(min_length=1, description="asset keys to read, in band order")
    mask_asset: str | None = Field(
        None, description="asset with cloud classes/bits (SCL, qa_pixel); default per collection"
    )
    categorical: list[str] = Field(
        default_factory=list, description="assets resampled with nearest (class codes, bit masks)"
    )
    resampling: Resampling = Field("bilinear", description="resampling of the other assets")
    max_cloud_cover: float = Field(
        100.0, ge=0, le=100, description="scene filter on eo:cloud_cover (ignored where absent)"
    )
    max_patch_cloud: float = Field(
        0.1, ge=0, le=1, description="reject a scene whose patch has a larger cloud fraction"
    )
    max_patch_nodata: float = Field(
        0.05, ge=0, le=1, description="reject a scene whose patch has a larger nodata fraction"
    )
    max_candidates: int = Field(6, gt=0, description="scenes tried per time slot before failing")
    harmonize: bool = Field(
        True, description="Sentinel-2: subtract the +1000 DN offset of baseline >= 04.00"
    )
    apply_scale: bool = Field(
        False, description="apply raster:bands scale/offset (float32) instead of recording them"
    )
    filter: dict | None = Field(None, description="extra CQL2-JSON filter for the search")
    fallback_for: str | None = Field(
        None,
        description="read this sensor instead of the named one where that one has no scene "
        "over the location (e.g. Sentinel-2 where NAIP does not reach)",
    )


class SingleTime(_Spec):
    """CSF: one scene per sensor, all sensors within `window_days` of each other."""

    mode: Literal["single"]
    start: dt.date
    end: dt.date
    window_days: int = Field(60, gt=0, description="max spread between the sensors' dates")

    @model_validator(mode="after")
    def _ordered(self) -> SingleTime:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class SeasonalTime(_Spec):
    """SeCo/SSL4EO: `n_dates` dates `spacing_days` apart, all shifted by one random offset."""

    mode: Literal["seasonal"]
    reference: dt.date = Field(description="latest reference date before the random shift")
    n_dates: int = Field(4, gt=0)
    spacing_days: int = Field(91, gt=0)
    window_days: int = Field(15, ge=0, description="half-width of each date's window")
    max_shift_days: int = Field(364, ge=0, description="the random shift is drawn in [0, this]")


class MultiYearTime(_Spec):
    """CACo: two year groups at least `min_gap_years` apart, each with `dates_per_group` dates."""

    mode: Literal["multi-year"]
    first_year: int
    last_year: int
    min_gap_years: int = Field(2, ge=1)
    dates_per_group: int = Field(4, gt=0)
    spacing_days: int = Field(91, gt=0)
    window_days: int = Field(15, ge=0)
    day_of_year: tuple[int, int] = Field(
        (0, 364), description="range of the random first day of year (0 = 1 January)"
    )

    @model_validator(mode="after")
    def _years_fit(self) -> MultiYearTime:
        if self.last_year - self.first_year < self.min_gap_years:
            raise ValueError(
                f"last_year - first_year must be at least min_gap_years ({self.min_gap_years})"
            )
        low, high = self.day_of_year
        if not 0 <= low <= high <= 364:
            raise ValueError("day_of_year must be [low, high] with 0 <= low <= high <= 364")
        return self


class TimestampsTime(_Spec):
    """fMoW-Sentinel: scenes near given dates (a list, or a location column of timestamps)."""

    mode: Literal["timestamps"]
    dates: list[dt.date] = Field(default_factory=list)
    column: str | None = Field(None, description="location column holding a JSON list of dates")
    window_days: int = Field(30, ge=0)
    min_found: int | None = Field(
        None,
        ge=1,
        description="keep a location when at least this many of its dates have a clear scene of "
        "every sensor, leaving the other dates out (fMoW-Sentinel drops the fMoW images from "
        "before Sentinel-2); default: every date is required",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TimestampsTime:
        if bool(self.dates) == bool(self.column):
            raise ValueError("give exactly one of dates or column")
        return self


TimeSpec = Annotated[
    Union[SingleTime, SeasonalTime, MultiYearTime, TimestampsTime],  # noqa: UP007
    Field(discriminator="mode"),
]


class GridSpec(_Spec):
    """The patch: local UTM zone, centred on the location.

    `common` puts every asset of every sensor on one grid of `size` px at `gsd` metres (CSF);
    `native` gives each resolution group of a sensor its own grid over the same extent
    (`size` × `gsd` metres; SeCo's 10/20/60 m layout).
    """

    layout: Literal["common", "native"] = "common"
    gsd: float = Field(10.0, gt=0, description="metres per pixel of the common / finest grid")
    size: int = Field(128, gt=0, le=8192, description="pixels per side at gsd")


class ImagerySpec(_Spec):
    catalogs: dict[str, CatalogSpec] = Field(min_length=1)
    sensors: dict[str, SensorSpec] = Field(min_length=1)
    time: TimeSpec
    grid: GridSpec = GridSpec()

    @model_validator(mode="after")
    def _catalogs_exist(self) -> ImagerySpec:
        for name, sensor in self.sensors.items():
            if sensor.catalog not in self.catalogs:
                raise ValueError(
                    f"sensors.{name}.catalog is {sensor.catalog!r}; expected one of "
                    f"{sorted(self.catalogs)}"
                )
            backed = sensor.fallback_for
            if backed is not None:
                others = sorted(set(self.sensors) - {name})
                if backed not in others:
                    raise ValueError(
                        f"sensors.{name}.fallback_for is {backed!r}; expected one of {others}"
                    )
                if self.sensors[backed].fallback_for is not None:
                    raise ValueError(
                        f"sensors.{name}.fallback_for names {backed!r}, itself a fallback: "
                        "fallbacks do not chain"
                    )
            # names become member suffixes: WebDataset splits keys at dots and lower-cases suffixes
            if not re.fullmatch(r"[a-z0-9_-]+", name):
                raise ValueError(
                    f"sensor name {name!r}: use lower-case letters, digits, '_' or '-' only"
                )
        return self


class AudioSpec(_Spec):
    """SoundingEarth: each location's recording, downloaded, decoded, cut and turned into a log-mel
    spectrogram; the location table must come from the aporee sampler (download_url, md5 …)."""

    sample_rate: int = Field(22050, ge=4000, le=192000, description="resample to this rate, Hz")
    max_duration_s: float = Field(300.0, gt=0, description="keep at most this much audio")
    segment: Literal["first", "centre", "random"] = Field(
        "first", description="which part of a longer recording to keep (random: seeded)"
    )
    n_mels: int = Field(128, gt=0, description="mel bands of the spectrogram")
    n_fft: int = Field(1024, gt=0)
    hop_length: int = Field(512, gt=0)
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = Field(None, gt=0, description="default: half the sample rate")
    min_frames: int = Field(
        128, gt=0, description="recordings shorter than this many spectrogram frames are skipped"
    )
    proxy: str | None = Field(None, description="HTTP proxy for downloads (the demo stand-in)")
    retries: int = Field(3, ge=0)
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _band_fits(self) -> AudioSpec:
        top = self.fmax if self.fmax is not None else self.sample_rate / 2
        if not self.fmin < top <= self.sample_rate / 2:
            raise ValueError("need fmin < fmax <= sample_rate / 2")
        return self


class FmowImagesSpec(_Spec):
    """GASSL: every image of a location's fMoW sequence, cropped around its box and resized."""

    root: str | None = Field(
        None, description="fMoW root (local path or fsspec URL); default: the sampler's root"
    )
    size: int = Field(224, gt=0, le=4096, description="output side in pixels")
    context: float = Field(
        0.5, ge=0, description="margin around the box, as a fraction of the box's longer side"
    )
    max_images: int | None = Field(None, gt=0, description="keep at most this many, evenly")
    storage_options: dict = Field(default_factory=dict)


class OutputSpec(_Spec):
    format: Literal["tif", "npy"] = Field("tif", description="image members: GeoTIFF or .npy")
    samples_per_shard: int = Field(256, gt=0)
    max_shard_mb: float = Field(
        1024, gt=0, description="split a shard into parts (NNNNN-0.tar, -1 …) past this size"
    )
