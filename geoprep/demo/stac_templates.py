"""Static STAC metadata of the demo collections: per-asset templates and collection facts.

:data:`ASSET_TEMPLATES` holds, per collection and asset key, the fields PC's ``item_assets``
carry (titles, roles, ``eo:bands``, ``raster:bands``, Landsat's QA bit fields);
:data:`COLLECTIONS` holds titles, licences, providers, item extensions and the snapshot
partitioning. :mod:`geoprep.demo.stac_items` builds items and collections from both.
"""

from __future__ import annotations

from geoprep.demo.landsat_products import LANDSAT_BANDS
from geoprep.demo.render import BANDS
from geoprep.demo.s2_products import S2_GSD

PC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
PC_DATA = "https://planetarycomputer.microsoft.com/api/data/v1"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXT = "https://stac-extensions.github.io"

S2_BAND_INFO = {  # name: (common name, description, full width at half maximum in µm)
    "B01": ("coastal", "Coastal aerosol", 0.027), "B02": ("blue", "Blue", 0.098),
    "B03": ("green", "Green", 0.045), "B04": ("red", "Red", 0.038),
    "B05": ("rededge", "Vegetation red edge 1", 0.019),
    "B06": ("rededge", "Vegetation red edge 2", 0.018),
    "B07": ("rededge", "Vegetation red edge 3", 0.028), "B08": ("nir", "NIR", 0.145),
    "B8A": ("rededge", "Vegetation red edge 4", 0.033), "B09": (None, "Water vapor", 0.026),
    "B11": ("swir16", "SWIR (1.6)", 0.143), "B12": ("swir22", "SWIR (2.2)", 0.242),
}  # fmt: skip
LANDSAT_INFO = {  # key: (OLI band, title, description, centre µm, FWHM µm)
    "coastal": ("OLI_B1", "Coastal/Aerosol Band", "Coastal/Aerosol", 0.44, 0.02),
    "blue": ("OLI_B2", "Blue Band", "Visible blue", 0.48, 0.06),
    "green": ("OLI_B3", "Green Band", "Visible green", 0.56, 0.06),
    "red": ("OLI_B4", "Red Band", "Visible red", 0.65, 0.04),
    "nir08": ("OLI_B5", "Near Infrared Band 0.8", "Near infrared", 0.87, 0.03),
    "swir16": ("OLI_B6", "Short-wave Infrared Band 1.6", "Short-wave infrared", 1.61, 0.09),
    "swir22": ("OLI_B7", "Short-wave Infrared Band 2.2", "Short-wave infrared", 2.2, 0.19),
}


def _s2_eo(band: str) -> dict:
    common, text, fwhm = S2_BAND_INFO[band]
    entry = {
        "name": band,
        "common_name": common,
        "description": f"Band {band[1:].lstrip('0')} - {text}",
        "center_wavelength": BANDS[band],
        "full_width_half_max": fwhm,
    }
    if band == "B8A":
        entry["description"] = f"Band 8A - {text}"
    return {k: v for k, v in entry.items() if v is not None}


def _asset_templates() -> dict[str, dict[str, dict]]:
    """Per collection and asset key: the static asset fields (as in PC's ``item_assets``)."""
    s2 = {}
    for band in BANDS:
        eo = _s2_eo(band)
        s2[band] = {
            "gsd": float(S2_GSD[band]),
            "type": COG,
            "roles": ["data"],
            "title": f"{eo['description']} - {S2_GSD[band]}m",
            "eo:bands": [eo],
        }
    s2["SCL"] = {
        "gsd": 20.0,
        "type": COG,
        "roles": ["data"],
        "title": "Scene classfication map (SCL)",
    }
    s2["AOT"] = {
        "gsd": 10.0,
        "type": COG,
        "roles": ["data"],
        "title": "Aerosol optical thickness (AOT)",
    }
    s2["WVP"] = {"gsd": 10.0, "type": COG, "roles": ["data"], "title": "Water vapour (WVP)"}
    s2["visual"] = {
        "gsd": 10.0,
        "type": COG,
        "roles": ["data"],
        "title": "True color image",
        "eo:bands": [_s2_eo("B04"), _s2_eo("B03"), _s2_eo("B02")],
    }
    s2["product-metadata"] = {
        "type": "application/xml",
        "roles": ["metadata"],
        "title": "Product metadata",
    }
    reflectance = {
        "scale": 2.75e-05,
        "nodata": 0,
        "offset": -0.2,
        "data_type": "uint16",
        "spatial_resolution": 30,
    }
    landsat = {}
    for key, (oli, title, text, centre, fwhm) in LANDSAT_INFO.items():
        suffix = LANDSAT_BANDS[key][0]
        landsat[key] = {
            "type": COG,
            "roles": ["data", "reflectance"],
            "title": title,
            "eo:bands": [
                {
                    "name": oli,
                    "common_name": key,
                    "description": text,
                    "center_wavelength": centre,
                    "full_width_half_max": fwhm,
                }
            ],
            "description": f"Collection 2 Level-2 {title.replace(' Band', '')} Band ({suffix})"
            " Surface Reflectance",
            "raster:bands": [reflectance],
        }
    landsat["lwir11"] = {
        "gsd": 100,
        "type": COG,
        "roles": ["data", "temperature"],
        "title": "Surface Temperature Band",
        "eo:bands": [
            {
                "name": "TIRS_B10",
                "common_name": "lwir11",
                "description": "Long-wave infrared",
                "center_wavelength": 10.9,
                "full_width_half_max": 0.59,
            }
        ],
        "description": "Collection 2 Level-2 Thermal Infrared Band (ST_B10) Surface Temperature",
        "raster:bands": [
            {
                "unit": "kelvin",
                "scale": 0.00341802,
                "nodata": 0,
                "offset": 149.0,
                "data_type": "uint16",
                "spatial_resolution": 30,
            }
        ],
    }
    landsat["qa_pixel"] = {
        "type": COG,
        "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
        "title": "Pixel Quality Assessment Band",
        "description": "Collection 2 Level-1 Pixel Quality Assessment Band (QA_PIXEL)",
        "classification:bitfields": _qa_bitfields(),
        "raster:bands": [
            {"unit": "bit index", "nodata": 1, "data_type": "uint16", "spatial_resolution": 30}
        ],
    }
    s1 = {}
    for pol in ("vv", "vh"):
        tx, rx = (
            ("vertical" if pol[0] == "v" else "horizontal"),
            "vertical" if pol[1] == "v" else "horizontal",
        )
        s1[pol] = {
            "type": COG,
            "roles": ["data"],
            "title": f"{pol.upper()}: {tx} transmit, {rx} receive",
            "description": f"Terrain-corrected gamma naught values of signal transmitted with {tx}"
            f" polarization and received with {rx} polarization with radiometric terrain"
            " correction applied.",
            "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10}],
        }
    naip = {
        "image": {
            "type": COG,
            "roles": ["data"],
            "title": "RGBIR COG tile",
            "eo:bands": [
                {"name": "Red", "common_name": "red"},
                {"name": "Green", "common_name": "green"},
                {"name": "Blue", "common_name": "blue"},
                {"name": "NIR", "common_name": "nir", "description": "near-infrared"},
            ],
        }
    }
    return {"sentinel-2-l2a": s2, "landsat-c2-l2": landsat, "sentinel-1-rtc": s1, "naip": naip}


def _qa_bitfields() -> list[dict]:
    def flag(name: str, offset: int, description: str) -> dict:
        return {
            "name": name,
            "length": 1,
            "offset": offset,
            "description": description,
            "classes": [{"name": f"not_{name}", "value": 0}, {"name": name, "value": 1}],
        }

    def confidence(name: str, offset: int) -> dict:
        levels = ("not_set", "low", "medium", "high")
        return {
            "name": f"{name}_confidence",
            "length": 2,
            "offset": offset,
            "description": f"{name.replace('_', ' ').capitalize()} confidence",
            "classes": [{"name": lvl, "value": i} for i, lvl in enumerate(levels)],
        }

    return [
        flag("fill", 0, "Image or fill data"),
        flag("dilated_cloud", 1, "Dilated cloud"),
        flag("cirrus", 2, "Cirrus mask"),
        flag("cloud", 3, "Cloud mask"),
        flag("cloud_shadow", 4, "Cloud shadow mask"),
        flag("snow", 5, "Snow/Ice mask"),
        flag("clear", 6, "Cloud or dilated cloud bits set"),
        flag("water", 7, "Water mask"),
        confidence("cloud", 8),
        confidence("cloud_shadow", 10),
        confidence("snow", 12),
        confidence("cirrus", 14),
    ]


ASSET_TEMPLATES = _asset_templates()

#: Collection-level facts: title, licence, providers, extensions, snapshot partitioning.
COLLECTIONS = {
    "sentinel-2-l2a": {
        "title": "Sentinel-2 Level-2A", "license": "proprietary",
        "keywords": ["Sentinel", "Copernicus", "ESA", "Satellite", "Global", "Imagery",
                     "Reflectance"],
        "providers": [("ESA", ["producer", "licensor"], "https://sentinel.esa.int/web/sentinel/missions/sentinel-2"),
                      ("Esri", ["processor"], "https://www.esri.com/")],
        "license_link": "https://scihub.copernicus.eu/twiki/pub/SciHubWebPortal/TermsConditions/Sentinel_Data_Terms_and_Conditions.pdf",
        "item_extensions": ["eo/v1.0.0", "sat/v1.0.0", "projection/v1.0.0"],
        "partition": "W-MON", "preview": "assets=visual&asset_bidx=visual%7C1%2C2%2C3&nodata=0",
        "description": "Demo-world stand-in for Sentinel-2 L2A: bottom-of-atmosphere reflectance"
        " in 12 bands at 10, 20 and 60 m, with scene classification.",
    },
    "landsat-c2-l2": {
        "title": "Landsat Collection 2 Level-2", "license": "proprietary",
        "keywords": ["Landsat", "USGS", "NASA", "Satellite", "Global", "Imagery", "Reflectance",
                     "Temperature"],
        "providers": [("NASA", ["producer", "licensor"], "https://landsat.gsfc.nasa.gov/"),
                      ("USGS", ["producer", "processor", "licensor"],
                       "https://www.usgs.gov/landsat-missions/landsat-collection-2-level-2-science-products")],
        "license_link": "https://www.usgs.gov/core-science-systems/hdds/data-policy",
        "item_extensions": ["raster/v1.1.0", "eo/v1.0.0", "view/v1.0.0", "projection/v1.1.0",
                            "https://landsat.usgs.gov/stac/landsat-extension/v1.1.1/schema.json",
                            "classification/v1.0.0", "scientific/v1.0.0"],
        "partition": "MS", "preview": "assets=red&assets=green&assets=blue&color_formula="
        "gamma+RGB+2.7%2C+saturation+1.5%2C+sigmoidal+RGB+15+0.55",
        "description": "Demo-world stand-in for Landsat 8-9 Collection 2 Level-2: surface"
        " reflectance and surface temperature at 30 m with pixel quality flags.",
    },
    "sentinel-1-rtc": {
        "title": "Sentinel 1 Radiometrically Terrain Corrected (RTC)", "license": "CC-BY-4.0",
        "keywords": ["ESA", "Copernicus", "Sentinel", "C-Band", "SAR", "RTC"],
        "providers": [("ESA", ["licensor", "producer"],
                       "https://sentinel.esa.int/web/sentinel/missions/sentinel-1"),
                      ("Catalyst", ["processor"], "https://catalyst.earth")],
        "license_link": "https://creativecommons.org/licenses/by/4.0/",
        "item_extensions": ["sar/v1.0.0", "sat/v1.0.0", "projection/v1.0.0", "raster/v1.1.0"],
        "partition": "MS",
        "preview": "assets=vv&assets=vh&expression=vv%3Bvh%3Bvv%2Fvh&rescale=0%2C.6",
        "msft:requires_account": True, "msft:group_id": "sentinel-1",
        "description": "Demo-world stand-in for Sentinel-1 RTC: terrain-corrected gamma naught"
        " backscatter (VV, VH) at 10 m.",
    },
    "naip": {
        "title": "NAIP: National Agriculture Imagery Program", "license": "proprietary",
        "keywords": ["NAIP", "Aerial", "Imagery", "USDA", "AFPO", "Agriculture",
                     "United States"],
        "providers": [("USDA Farm Service Agency", ["producer", "licensor"],
                       "https://www.fsa.usda.gov/programs-and-services/aerial-photography/imagery-programs/naip-imagery/")],
        "license_link": "https://www.fsa.usda.gov/help/policies-and-links/",
        "item_extensions": ["eo/v1.0.0", "projection/v1.0.0"],
        "partition": "AS", "preview": "assets=image&asset_bidx=image%7C1%2C2%2C3",
        "description": "Demo-world stand-in for NAIP: four-band (red, green, blue, near"
        " infrared) aerial imagery of the US area.",
    },
}  # fmt: skip
