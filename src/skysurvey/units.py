"""Units, UCDs and descriptions of every catalog column: one table, used by every writer.

``schema.py`` fixes the columns and their Arrow types; this module says what each one means,
in the terms astronomy tools read: a unit astropy and the FITS/VOUnit standards accept, an IVOA
UCD (https://www.ivoa.net/documents/UCD1+/) where a standard one exists, and a one-line
description. The exports (FITS ``TUNITn``/``TCOMMn``/``TUCDn``, VOTable ``unit``/``ucd``/
``DESCRIPTION``) and the catalog's own Parquet files (astropy's ``table_meta_yaml``) are all
generated from :data:`COLUMN_META`, so they cannot disagree.

A test checks that every column of every schema in ``schema.py`` has an entry here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["COLUMN_META", "ColumnMeta", "annotate", "meta_for", "table_meta_yaml",
           "with_astropy_metadata"]


@dataclass(frozen=True)
class ColumnMeta:
    unit: str | None  # astropy unit string (FITS/VOUnit compatible); None: dimensionless
    ucd: str | None  # IVOA UCD1+, None when no standard word fits
    description: str


def _m(unit, ucd, description) -> ColumnMeta:
    return ColumnMeta(unit, ucd, description)


COLUMN_META: dict[str, ColumnMeta] = {
    # identifiers and partitions
    "image_id": _m(None, "meta.id;obs.image", "Image id: input path, FITS extensions removed"),
    "source_id": _m(None, "meta.id", "Source number within its image (0..n-1)"),
    "object_id": _m(None, "meta.id;meta.main", "Object id (detections of one sky object)"),
    "band": _m(None, "instr.filter", "Band: the FILTER keyword, lowercased"),
    "night": _m(None, "time.epoch;obs", "Night of observation (UTC date of DATE-OBS)"),
    # positions
    "x": _m("pix", "pos.cartesian.x;instr.det", "Windowed centroid x, 0-based pixels"),
    "y": _m("pix", "pos.cartesian.y;instr.det", "Windowed centroid y, 0-based pixels"),
    "ra": _m("deg", "pos.eq.ra;meta.main", "Right ascension (ICRS)"),
    "dec": _m("deg", "pos.eq.dec;meta.main", "Declination (ICRS)"),
    "ra_err": _m("arcsec", "stat.error;pos.eq.ra", "Error of ra (times cos dec)"),
    "dec_err": _m("arcsec", "stat.error;pos.eq.dec", "Error of dec"),
    "_healpix_29": _m(None, "pos.healpix", "NESTED HEALPix index at order 29 (HATS)"),
    # photometry
    "flux": _m("adu", "phot.flux", "Total (Kron) flux in image units"),
    "flux_err": _m("adu", "stat.error;phot.flux", "1-sigma error of flux"),
    "flux_aper": _m("adu", "phot.flux", "Circular aperture flux (radius: images.aperture_radius)"),
    "flux_aper_err": _m("adu", "stat.error;phot.flux", "1-sigma error of flux_aper"),
    "flux_apcorr": _m("adu", "phot.flux", "Aperture flux corrected to total (point sources)"),
    # PSF photometry (psfphot.py; null unless the run asked for it)
    "flux_psf": _m("adu", "phot.flux", "PSF-fitted flux, on flux_apcorr's total scale"),
    "flux_psf_err": _m("adu", "stat.error;phot.flux", "Error of flux_psf"),
    "mag_psf": _m("mag", "phot.mag", "Calibrated magnitude of flux_psf"),
    "mag_psf_err": _m("mag", "stat.error;phot.mag", "Error of mag_psf"),
    "psf_chi2": _m(None, "stat.fit.chi2", "Reduced chi-square of the PSF fit"),
    "x_psf": _m("pix", "pos.cartesian.x;instr.det", "PSF-fitted x, 0-based pixels"),
    "y_psf": _m("pix", "pos.cartesian.y;instr.det", "PSF-fitted y, 0-based pixels"),
    "psf_nstars": _m(None, "meta.number", "Stars the image's PSF model was built from"),
    "psf_resid_rms": _m(None, "stat.stdev;arith.ratio", "PSF model residual RMS / peak"),
    "psf_fwhm_center": _m("pix", "phys.size.diameter;instr.det.psf", "PSF FWHM, image centre"),
    "psf_fwhm_corner_max": _m("pix", "phys.size.diameter;instr.det.psf",
                              "Largest PSF FWHM at the image corners"),
    "psf_ellipticity_max": _m(None, "src.ellipticity", "Largest PSF ellipticity (1 - b/a)"),
    "flux_apcorr_err": _m("adu", "stat.error;phot.flux", "1-sigma error of flux_apcorr"),
    "mag": _m("mag", "phot.mag", "Magnitude from flux and the image zero point"),
    "mag_err": _m("mag", "stat.error;phot.mag", "1-sigma error of mag"),
    "mag_apcorr": _m("mag", "phot.mag", "Magnitude from flux_apcorr (point sources)"),
    "mag_apcorr_err": _m("mag", "stat.error;phot.mag", "1-sigma error of mag_apcorr"),
    "snr": _m(None, "stat.snr", "Signal-to-noise ratio, flux / flux_err"),
    "peak": _m("adu", "phot.flux;stat.max", "Highest pixel above the background"),
    "background": _m("adu", "instr.skyLevel", "Local sky background at the source"),
    "class_star": _m(None, "src.class.starGalaxy", "Point-source likeness, 0..1 (1 = star)"),
    # shape
    "a": _m("pix", "phys.size.smajAxis;instr.det", "Semi-major axis (second moments)"),
    "b": _m("pix", "phys.size.sminAxis;instr.det", "Semi-minor axis (second moments)"),
    "theta": _m("rad", "pos.posAng;instr.det", "Major axis angle, counter-clockwise from +x"),
    "theta_world": _m("deg", "pos.posAng", "Major axis position angle, east of north (ICRS)"),
    "fwhm": _m("pix", "phys.size.diameter;instr.det.psf", "Full width at half maximum"),
    "ellipticity": _m(None, "src.ellipticity", "1 - b/a"),
    "npix": _m("pix2", "phys.area;instr.det", "Isophotal area"),
    "flags": _m(None, "meta.code.qual", "Quality flags, bit mask (data/README.md)"),
    # images
    "source_key": _m(None, "meta.ref.url", "Where the FITS file came from"),
    "hdu": _m(None, "meta.number", "Index of the HDU measured"),
    "width": _m("pix", "meta.number;instr.det", "Image width"),
    "height": _m("pix", "meta.number;instr.det", "Image height"),
    "n_sources": _m(None, "meta.number", "Number of sources"),
    "bkg_median": _m("adu", "instr.skyLevel", "Median sky background"),
    "bkg_rms": _m("adu", "instr.skyLevel;stat.stdev", "Sky background RMS"),
    "fwhm_median": _m("pix", "instr.obsty.seeing", "Median FWHM of point sources"),
    "fwhm_arcsec": _m("arcsec", "instr.obsty.seeing", "Seeing: median FWHM"),
    "zero_point": _m("mag", "phot.mag;arith.zp", "Photometric zero point"),
    "zero_point_source": _m(None, "meta.ref", "Where the zero point came from"),
    "zero_point_err": _m("mag", "stat.error;arith.zp", "Error of the zero point"),
    "zero_point_rms": _m("mag", "stat.stdev;arith.zp", "Scatter of the calibration stars"),
    "n_calib": _m(None, "meta.number", "Reference stars used for the zero point"),
    "astrom_offset_ra": _m("arcsec", "pos.eq.ra;arith.diff", "Median RA offset to reference"),
    "astrom_offset_dec": _m("arcsec", "pos.eq.dec;arith.diff", "Median Dec offset to reference"),
    "astrom_rms": _m("arcsec", "stat.stdev;pos", "Astrometric scatter against the reference"),
    "aperture_correction": _m(None, "phot.flux;arith.ratio", "flux_apcorr / flux_aper (stars)"),
    "aperture_correction_err": _m(None, "stat.error;arith.ratio", "Error of aperture_correction"),
    "depth_5sigma": _m("mag", "phot.mag;stat.max", "5-sigma point-source limiting magnitude"),
    "wcs_frame": _m(None, "pos.frame", "Celestial frame of the header's WCS"),
    "gain": _m(None, "instr.calib", "Detector gain, electrons per ADU"),
    "saturate": _m("adu", "instr.saturation", "Saturation level"),
    "has_wcs": _m(None, "meta.code", "The image has a celestial WCS"),
    "ra_center": _m("deg", "pos.eq.ra", "Right ascension of the image centre (ICRS)"),
    "dec_center": _m("deg", "pos.eq.dec", "Declination of the image centre (ICRS)"),
    "pixel_scale": _m("arcsec / pix", "instr.scale", "Pixel scale"),
    "exptime": _m("s", "time.duration;obs.exposure", "Exposure time"),
    "mjd": _m("d", "time.epoch", "Modified Julian Date of the observation"),
    "date_obs": _m(None, "time.epoch", "DATE-OBS as in the header (ISO 8601)"),
    "filter": _m(None, "instr.filter", "The header's FILTER value"),
    "telescope": _m(None, "instr.tel", "Telescope"),
    "aperture_radius": _m("pix", "phys.angSize;instr.det", "Radius of the flux_aper circle"),
    "detect_thresh": _m(None, "stat.snr;stat.min", "Detection threshold, background RMS units"),
    "masked_fraction": _m(None, "arith.ratio", "Fraction of masked (NaN/Inf) pixels"),
    "warnings": _m(None, "meta.note", "Warnings, '; '-joined"),
    "seconds": _m("s", "time.duration", "Processing wall time"),
    "processed_at": _m(None, "time.processing", "When the image was processed (UTC)"),
    "pipeline_version": _m(None, "meta.version", "skysurvey version that wrote the row"),
    # objects, light curves, associations
    "n_detections": _m(None, "meta.number", "Number of detections of the object"),
    "n_nights": _m(None, "meta.number", "Number of nights with a detection"),
    "first_mjd": _m("d", "time.start", "First detection (MJD)"),
    "last_mjd": _m("d", "time.end", "Last detection (MJD)"),
    "variable": _m(None, "src.var", "Flux varies beyond its errors"),
    "transient_candidate": _m(None, "src.var;meta.code",
                              "Detected, and deep covering images show no flux there"),
    "n": _m(None, "meta.number", "Number of measurements"),
    "mean_mag": _m("mag", "phot.mag;stat.mean", "Error-weighted mean magnitude"),
    "mean_mag_err": _m("mag", "stat.error;phot.mag", "Error of mean_mag"),
    "scatter": _m("mag", "stat.stdev;phot.mag", "Scatter of the magnitudes"),
    "chi2_reduced": _m(None, "stat.fit.chi2", "Reduced chi-square against a constant"),
    "separation_arcsec": _m("arcsec", "pos.angDistance", "Distance to the object position"),
    # coverage and forced photometry (forced.py)
    "footprint_hpx12": _m(None, "pos.healpix", "NESTED order-12 HEALPix cells of valid pixels"),
    "mag_limit": _m("mag", "phot.mag;stat.max", "5-sigma point-source limit at the position"),
    # the forced light curves' summary (lightcurves.OBJECT_VARIABILITY_SCHEMA)
    "n_covering": _m(None, "meta.number", "Images whose valid area covered the object"),
    "n_forced_nondetections": _m(None, "meta.number", "Covering images without a detection"),
    "forced_chi2": _m(None, "stat.fit.chi2", "Chi-square of the forced fluxes vs a constant"),
    "forced_dof": _m(None, "stat.fit.dof", "Degrees of freedom of forced_chi2"),
    "forced_chi2_reduced": _m(None, "stat.fit.chi2", "forced_chi2 / forced_dof"),
    "variability_sigma": _m(None, "stat.value", "Chi-square excess in Gaussian sigma"),
    "max_detected_snr": _m(None, "stat.snr;stat.max", "Largest forced SNR where it was detected"),
    "detected_mag": _m("mag", "phot.mag", "Brightest forced magnitude where detected (SNR>=5)"),
    "n_deep_quiet": _m(None, "meta.number", "Deep covering images with no flux (SNR < 3)"),
}


def meta_for(name: str) -> ColumnMeta | None:
    """The metadata of a column (None for a column this table does not know, e.g. from SQL)."""
    return COLUMN_META.get(name)


def annotate(table) -> None:
    """Set unit, description and ``meta['ucd']`` on the known columns of an astropy Table."""
    import astropy.units as u

    for name in table.colnames:
        info = meta_for(name)
        if info is None:
            continue
        column = table[name]
        if info.unit and getattr(column, "unit", None) is None:
            column.unit = u.Unit(info.unit)
        column.description = info.description
        if info.ucd:
            column.meta["ucd"] = info.ucd


def _ecsv_datatype(arrow_type: pa.DataType) -> str:
    if pa.types.is_list(arrow_type):  # ECSV's variable-length arrays: a string with a subtype
        return "string\n  subtype: " + _ecsv_datatype(arrow_type.value_type) + "[null]"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return str(np.dtype(arrow_type.to_pandas_dtype()))
    return "string"  # strings, timestamps (astropy's Parquet reader keeps the Arrow type)


@functools.lru_cache(maxsize=32)
def table_meta_yaml(schema: pa.Schema) -> str:
    """astropy's ECSV-style header (the ``table_meta_yaml`` Parquet key) for *schema*.

    A ``datatype:`` entry for every column (astropy's Parquet reader needs one per column) with
    the unit, description and UCD from :data:`COLUMN_META`. Written as JSON-quoted YAML without
    importing astropy.table (the handler writes it for every image; cached per schema).
    """
    lines = ["datatype:"]
    for field in schema:
        info = meta_for(field.name)
        lines.append(f"- name: {json.dumps(field.name)}")
        if info is not None and info.unit:
            lines.append(f"  unit: {json.dumps(info.unit)}")
        lines.append(f"  datatype: {_ecsv_datatype(field.type)}")
        if info is not None:
            lines.append(f"  description: {json.dumps(info.description)}")
            if info.ucd:
                lines += ["  meta: !!omap", f"  - {{ucd: {json.dumps(info.ucd)}}}"]
    return "\n".join(lines)


def with_astropy_metadata(table: pa.Table) -> pa.Table:
    """*table* with astropy's ``table_meta_yaml`` (units, descriptions, UCDs) in its schema.

    Also records each string column's longest value (``table::len::<name>``), as astropy's own
    writer does, so ``Table.read`` needs no guess. Other readers ignore both keys.
    """
    metadata = dict(table.schema.metadata or {})
    metadata[b"table_meta_yaml"] = table_meta_yaml(table.schema).encode("utf-8")
    for field in table.schema:
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            lengths = pc.utf8_length(table[field.name])
            longest = pc.max(lengths).as_py() if table.num_rows else None
            metadata[f"table::len::{field.name}".encode()] = str(max(longest or 1, 4)).encode()
    return table.replace_schema_metadata(metadata)
