//! Native fast path of the stamp-classifier worker's decoding (Python module `stamp_native`).
//!
//! Two functions, each the compiled twin of a pure-Python path in `worker/`:
//!
//! * [`Program::read`] reads one Avro record of a known writer schema: the fields the
//!   classifier uses become Python values, everything else (`prv_candidates`, `fp_hists`...)
//!   is skipped.  Twin of `worker.decode.alerts.AlertDecoder._read_record`.
//! * [`prepare_cutouts`] turns the three gzipped FITS cutouts of an alert into the
//!   (crop, crop, 3) float32 model image: gunzip (libdeflate), FITS data, centre crop,
//!   non-finite → 0, per-stamp min-max normalization.  Twin of
//!   `worker.prepare.stamps.decode_stamps` + `worker.prepare.stamps.preprocess_batch`.
//!
//! Both only ever *accept*: whenever the bytes are unusual or wrong (corrupt, truncated,
//! a FITS header the Python side has not parsed yet, a stamp cut by a CCD edge, a crop
//! without finite pixels...) they return `None` and the caller runs the pure-Python path,
//! which either gives the same result or refuses with its own reason and message.  So
//! refusals never differ between the two paths, and the native code needs no error
//! taxonomy of its own.  The input is untrusted: every read goes through bounds-checked
//! slices (no `unsafe` here; libdeflate gets the slice lengths).

use libdeflater::Decompressor;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyByteArray, PyDict, PyString, PyTuple};

// ------------------------------------------------------------------------------ Avro

/// One node of a compiled writer type.
enum Ty {
    Null,
    Boolean,
    Long, // Avro int and long: zig-zag varints
    Float,
    Double,
    Str,
    Bytes,
    Fixed(usize),
    Enum,
    Union(Vec<Ty>),
    /// Fields in writer order; `Some(key)` = read into the record's dict under that key.
    Record(Vec<(Option<Py<PyString>>, Ty)>),
    Array(Box<Ty>),
    Map(Box<Ty>),
}

/// Bytes are malformed or unusual: let the Python path decide.
struct Bail;

type R<T> = Result<T, Bail>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// An Avro long: at most 10 bytes and a value that fits 64 bits (else Bail).
    fn varint(&mut self) -> R<i64> {
        let mut result: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or(Bail)?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(Bail);
            }
            result |= u64::from(byte & 0x7F) << shift;
            if byte < 0x80 {
                return Ok((result >> 1) as i64 ^ -((result & 1) as i64));
            }
        }
        Err(Bail)
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Bail)?;
        let out = self.buf.get(self.pos..end).ok_or(Bail)?;
        self.pos = end;
        Ok(out)
    }

    /// A length-prefixed string or bytes value.
    fn sized(&mut self) -> R<&'a [u8]> {
        let n = self.varint()?;
        if n < 0 {
            return Err(Bail);
        }
        self.take(n as usize)
    }
}

fn skip(ty: &Ty, c: &mut Cursor, depth: u32) -> R<()> {
    if depth > 64 {
        return Err(Bail);
    }
    match ty {
        Ty::Null => {}
        Ty::Boolean => {
            c.take(1)?;
        }
        Ty::Long | Ty::Enum => {
            c.varint()?;
        }
        Ty::Float => {
            c.take(4)?;
        }
        Ty::Double => {
            c.take(8)?;
        }
        Ty::Str | Ty::Bytes => {
            c.sized()?;
        }
        Ty::Fixed(n) => {
            c.take(*n)?;
        }
        Ty::Union(branches) => {
            let index = c.varint()?;
            let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Bail)?;
            skip(branch, c, depth + 1)?;
        }
        Ty::Record(fields) => {
            for (_, field) in fields {
                skip(field, c, depth + 1)?;
            }
        }
        Ty::Array(item) | Ty::Map(item) => {
            let keyed = matches!(ty, Ty::Map(_));
            loop {
                let count = c.varint()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    // A block that carries its byte size is jumped over (as the Python skipper).
                    let size = c.varint()?;
                    if size < 0 {
                        return Err(Bail);
                    }
                    c.take(size as usize)?;
                    continue;
                }
                // Every item takes at least one byte (the schema is checked for that), so a
                // count beyond the bytes left is corrupt; this also bounds the loop.
                if count as u64 > (c.buf.len() - c.pos) as u64 {
                    return Err(Bail);
                }
                for _ in 0..count {
                    if keyed {
                        c.sized()?;
                    }
                    skip(item, c, depth + 1)?;
                }
            }
        }
    }
    Ok(())
}

/// Read a value the classifier uses (only types `Program` accepted for reading).
fn read(py: Python<'_>, ty: &Ty, c: &mut Cursor, depth: u32) -> R<Py<PyAny>> {
    if depth > 64 {
        return Err(Bail);
    }
    Ok(match ty {
        Ty::Null => py.None(),
        Ty::Boolean => match c.take(1)?[0] {
            0 => false.into_pyobject(py).map_err(|_| Bail)?.to_owned().into_any().unbind(),
            1 => true.into_pyobject(py).map_err(|_| Bail)?.to_owned().into_any().unbind(),
            _ => return Err(Bail),
        },
        Ty::Long => c.varint()?.into_pyobject(py).map_err(|_| Bail)?.into_any().unbind(),
        Ty::Float => {
            let raw: [u8; 4] = c.take(4)?.try_into().map_err(|_| Bail)?;
            f64::from(f32::from_le_bytes(raw)).into_pyobject(py).map_err(|_| Bail)?.into_any().unbind()
        }
        Ty::Double => {
            let raw: [u8; 8] = c.take(8)?.try_into().map_err(|_| Bail)?;
            f64::from_le_bytes(raw).into_pyobject(py).map_err(|_| Bail)?.into_any().unbind()
        }
        Ty::Str => {
            let text = std::str::from_utf8(c.sized()?).map_err(|_| Bail)?;
            PyString::new(py, text).into_any().unbind()
        }
        Ty::Bytes => PyBytes::new(py, c.sized()?).into_any().unbind(),
        Ty::Union(branches) => {
            let index = c.varint()?;
            let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Bail)?;
            read(py, branch, c, depth + 1)?
        }
        Ty::Record(fields) => {
            let dict = PyDict::new(py);
            for (key, field) in fields {
                match key {
                    Some(key) => {
                        let value = read(py, field, c, depth + 1)?;
                        dict.set_item(key.bind(py), value).map_err(|_| Bail)?;
                    }
                    None => skip(field, c, depth + 1)?,
                }
            }
            dict.into_any().unbind()
        }
        Ty::Fixed(_) | Ty::Enum | Ty::Array(_) | Ty::Map(_) => return Err(Bail),
    })
}

/// Parse the flat program written by `worker.decode.native.compile_program`.
fn parse(py: Python<'_>, code: &[i64], names: &[String], at: &mut usize, depth: u32) -> PyResult<Ty> {
    let bad = || pyo3::exceptions::PyValueError::new_err("malformed Avro program");
    if depth > 64 {
        return Err(bad());
    }
    let mut next = || -> PyResult<i64> {
        let v = *code.get(*at).ok_or_else(bad)?;
        *at += 1;
        Ok(v)
    };
    let op = next()?;
    Ok(match op {
        0 => Ty::Null,
        1 => Ty::Boolean,
        2 => Ty::Long,
        3 => Ty::Float,
        4 => Ty::Double,
        5 => Ty::Str,
        6 => Ty::Bytes,
        7 => Ty::Fixed(usize::try_from(next()?).map_err(|_| bad())?),
        8 => Ty::Enum,
        9 => {
            let n = next()?;
            let mut branches = Vec::new();
            for _ in 0..n {
                branches.push(parse(py, code, names, at, depth + 1)?);
            }
            Ty::Union(branches)
        }
        10 => {
            let n = next()?;
            let mut fields = Vec::new();
            for _ in 0..n {
                let key = *code.get(*at).ok_or_else(bad)?;
                *at += 1;
                let key = if key < 0 {
                    None
                } else {
                    let name = names.get(key as usize).ok_or_else(bad)?;
                    Some(PyString::intern(py, name).unbind())
                };
                fields.push((key, parse(py, code, names, at, depth + 1)?));
            }
            Ty::Record(fields)
        }
        11 => Ty::Array(Box::new(parse(py, code, names, at, depth + 1)?)),
        12 => Ty::Map(Box::new(parse(py, code, names, at, depth + 1)?)),
        _ => return Err(bad()),
    })
}

/// A writer schema's record, compiled once: which fields to read, which to skip.
#[pyclass(frozen, module = "stamp_native")]
struct Program {
    root: Ty,
}

#[pymethods]
impl Program {
    /// Build from the flat program (opcodes) and the field names it refers to.
    #[new]
    fn new(py: Python<'_>, code: Vec<i64>, names: Vec<String>) -> PyResult<Self> {
        let mut at = 0;
        let root = parse(py, &code, &names, &mut at, 0)?;
        if at != code.len() || !matches!(root, Ty::Record(_)) {
            return Err(pyo3::exceptions::PyValueError::new_err("malformed Avro program"));
        }
        Ok(Program { root })
    }

    /// Read the record at `pos`: `(dict, next position)`, or None when the Python path
    /// must decide (malformed or unusual bytes).
    fn read<'py>(&self, py: Python<'py>, buf: &[u8], pos: usize) -> Option<(Py<PyAny>, usize)> {
        let mut c = Cursor { buf, pos };
        if pos > buf.len() {
            return None;
        }
        read(py, &self.root, &mut c, 0).ok().map(|value| (value, c.pos))
    }

    /// Read the `count` records of an uncompressed container block, `buf[start..end]`, in
    /// place: the list of dicts, or None unless every record reads and they fill the block
    /// exactly (the Python path then reads the block and names the problem).
    fn read_block<'py>(&self, py: Python<'py>, buf: &[u8], start: usize, end: usize,
                       count: usize) -> Option<Vec<Py<PyAny>>> {
        let block = buf.get(..end)?;
        if start > end || count > end - start + 1 {
            return None;
        }
        let mut c = Cursor { buf: block, pos: start };
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            records.push(read(py, &self.root, &mut c, 0).ok()?);
        }
        (c.pos == end).then_some(records)
    }
}

// ------------------------------------------------------------------------------ stamps

const FITS_BLOCK: usize = 2880;

thread_local! {
    static INFLATER: std::cell::RefCell<Decompressor> = std::cell::RefCell::new(Decompressor::new());
}

/// Gunzip one cutout into `out` (its length = the size the trailer declares, bounded).
///
/// Only the plain case is taken: one gzip member with no header CRC (libdeflate does not
/// check that CRC, the Python path's ISA-L does).  The CRC-32 and size of the data are
/// checked by libdeflate.
fn gunzip(blob: &[u8], limit: usize) -> R<Vec<u8>> {
    if blob.len() < 18 || blob[0] != 0x1f || blob[1] != 0x8b || blob[2] != 8 || blob[3] & !0x08 != 0 {
        return Err(Bail);
    }
    let declared = u32::from_le_bytes(blob[blob.len() - 4..].try_into().map_err(|_| Bail)?) as usize;
    if declared > limit {
        return Err(Bail);
    }
    let mut out = vec![0u8; declared];
    let n = INFLATER
        .with(|d| d.borrow_mut().gzip_decompress(blob, &mut out))
        .map_err(|_| Bail)?;
    if n != declared {
        return Err(Bail);
    }
    Ok(out)
}

/// What the Python side parsed from a stamp's (single-block) FITS header.
struct Header {
    end: usize,
    nx: usize,
    ny: usize,
}

/// The header of `raw` from the Python side's cache, when it is the simple case this code
/// handles: a one-block header, BITPIX -32, no scaling, axes within `max_axis`.
fn header(py: Python<'_>, raw: &[u8], cache: &Bound<'_, PyDict>, max_axis: i64) -> R<Header> {
    let first = raw.get(..FITS_BLOCK).ok_or(Bail)?;
    let entry = cache.get_item(PyBytes::new(py, first)).map_err(|_| Bail)?.ok_or(Bail)?;
    let fields = entry.cast::<PyTuple>().map_err(|_| Bail)?;
    let get_i = |i: usize| -> R<i64> { fields.get_item(i).and_then(|v| v.extract::<i64>()).map_err(|_| Bail) };
    let get_f = |i: usize| -> R<f64> { fields.get_item(i).and_then(|v| v.extract::<f64>()).map_err(|_| Bail) };
    // _Header(end, bitpix, nx, ny, bscale, bzero, blank)
    let (end, bitpix, nx, ny) = (get_i(0)?, get_i(1)?, get_i(2)?, get_i(3)?);
    if end != FITS_BLOCK as i64 || bitpix != -32 || get_f(4)? != 1.0 || get_f(5)? != 0.0 {
        return Err(Bail);
    }
    if !(1..=max_axis).contains(&nx) || !(1..=max_axis).contains(&ny) {
        return Err(Bail);
    }
    Ok(Header { end: FITS_BLOCK, nx: nx as usize, ny: ny as usize })
}

/// Centre crop of one full-size stamp into channel `channel` of `image`; non-finite → 0.
/// Returns whether the crop held a finite pixel; bails on a −0.0 pixel: numpy's min/max
/// pick either zero when both signs are present (its SIMD order decides), and the sign of
/// the minimum shows in the normalized image.
fn crop_channel(raw: &[u8], h: &Header, size: usize, crop: usize, channel: usize, image: &mut [f32]) -> R<bool> {
    let lo = (size - crop) / 2;
    let data = raw.get(h.end..h.end + h.nx * h.ny * 4).ok_or(Bail)?;
    let mut any_finite = false;
    for y in 0..crop {
        let row = (lo + y) * h.nx;
        for x in 0..crop {
            let at = (row + lo + x) * 4;
            let px = data.get(at..at + 4).ok_or(Bail)?;
            let v = f32::from_be_bytes([px[0], px[1], px[2], px[3]]);
            if v == 0.0 && v.is_sign_negative() {
                return Err(Bail);
            }
            let v = if v.is_finite() {
                any_finite = true;
                v
            } else {
                0.0
            };
            image[(y * crop + x) * 3 + channel] = v;
        }
    }
    Ok(any_finite)
}

/// The three cutouts of an alert → its (crop, crop, 3) float32 model image (C order,
/// native byte order), or None when the Python path must decide.
///
/// Parameters: the science, template and difference ``stampData``; the Python side's
/// parsed-header cache (``worker.prepare.stamps._HEADER_CACHE``); the limits on the decompressed
/// size [bytes] and on the axes [pixels]; the full stamp side and the crop side [pixels].
/// Gunzip runs without the GIL.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn prepare_cutouts<'py>(
    py: Python<'py>,
    science: &[u8],
    template: &[u8],
    difference: &[u8],
    headers: &Bound<'py, PyDict>,
    max_decompressed: usize,
    max_axis: i64,
    stamp_size: usize,
    crop: usize,
) -> Option<Bound<'py, PyByteArray>> {
    if crop == 0 || crop > stamp_size {
        return None;
    }
    let raws = py.detach(|| -> R<[Vec<u8>; 3]> {
        Ok([gunzip(science, max_decompressed)?, gunzip(template, max_decompressed)?,
            gunzip(difference, max_decompressed)?])
    }).ok()?;
    let mut image = vec![0f32; crop * crop * 3];
    for (channel, raw) in raws.iter().enumerate() {
        let h = header(py, raw, headers, max_axis).ok()?;
        // A stamp cut by a CCD edge is padded back by the Python path.
        if h.nx != stamp_size || h.ny != stamp_size {
            return None;
        }
        if !crop_channel(raw, &h, stamp_size, crop, channel, &mut image).ok()? {
            return None; // all-NaN crop: refused by the Python path
        }
    }
    // Min-max per channel in float32, as numpy does it; a range that overflows float32
    // is normalized in float64 by the Python path.
    for channel in 0..3 {
        let mut low = f32::INFINITY;
        let mut high = f32::NEG_INFINITY;
        for v in image.iter().skip(channel).step_by(3) {
            low = low.min(*v);
            high = high.max(*v);
        }
        let span = high - low;
        if !span.is_finite() {
            return None;
        }
        for v in image.iter_mut().skip(channel).step_by(3) {
            *v -= low;
            if span > 0.0 {
                *v /= span;
            }
        }
    }
    let bytes: Vec<u8> = image.iter().flat_map(|v| v.to_ne_bytes()).collect();
    Some(PyByteArray::new(py, &bytes))
}

// ------------------------------------------------------------------------------ features

/// `worker.prepare.features._number`: a candidate value as f64, NaN when missing.  None (bail)
/// for a type whose conversion is not certain to equal Python's `float()`.
fn number(value: &Bound<'_, PyAny>, f32_max: f64) -> R<f64> {
    let v = if value.is_instance_of::<pyo3::types::PyFloat>() || value.is_instance_of::<pyo3::types::PyInt>() {
        // bool is an int; PyFloat_AsDouble gives float(x) for both (int: correctly rounded).
        value.extract::<f64>().map_err(|_| Bail)?
    } else {
        return Ok(f64::NAN);
    };
    if !v.is_finite() || v == -999.0 || v.abs() > f32_max {
        return Ok(f64::NAN);
    }
    Ok(v)
}

/// `worker.prepare.features.encode_isdiffpos`, for ASCII strings (anything else: bail).
fn isdiffpos(value: &Bound<'_, PyAny>) -> R<f64> {
    let Ok(text) = value.cast::<PyString>() else {
        return Ok(f64::NAN);
    };
    let text = text.to_str().map_err(|_| Bail)?;
    if !text.is_ascii() {
        return Err(Bail); // Unicode whitespace and case rules: left to Python
    }
    // str.strip()'s ASCII whitespace includes the separators 0x1c-0x1f.
    let stripped = text.trim_matches(|c: char| matches!(c, ' ' | '\t'..='\r' | '\x1c'..='\x1f'));
    Ok(match stripped.to_ascii_lowercase().as_str() {
        "t" | "1" | "true" => 1.0,
        "f" | "0" | "false" => 0.0,
        _ => f64::NAN,
    })
}

/// `worker.prepare.features._rotate`: (latitude, longitude) [deg]; libm's functions, as CPython's
/// `math` module calls them, and CPython's radians/degrees/`%` arithmetic.
fn rotate(ra: f64, dec: f64, m: &[[f64; 3]; 3]) -> (f64, f64) {
    let (a, d) = (ra * (std::f64::consts::PI / 180.0), dec * (std::f64::consts::PI / 180.0));
    let (x, y, z) = (d.cos() * a.cos(), d.cos() * a.sin(), d.sin());
    let u = m[0][0] * x + m[0][1] * y + m[0][2] * z;
    let v = m[1][0] * x + m[1][1] * y + m[1][2] * z;
    let w = m[2][0] * x + m[2][1] * y + m[2][2] * z;
    // Python's max(-1.0, min(1.0, w)) for a finite w
    let w = if w < 1.0 { w } else { 1.0 };
    let w = if -1.0 < w { w } else { -1.0 };
    let lat = w.asin() * (180.0 / std::f64::consts::PI);
    let lon = v.atan2(u) * (180.0 / std::f64::consts::PI);
    // Python float %: fmod, then the sign of the divisor.
    let mut r = lon % 360.0;
    if r != 0.0 {
        if r < 0.0 {
            r += 360.0;
        }
    } else {
        r = 0.0;
    }
    (lat, r)
}

/// The raw metadata feature vector (`worker.prepare.features.metadata_features`) as native-endian
/// float32 bytes, or None when Python must compute it.  `names` is FEATURE_NAMES,
/// `ecliptic` and `galactic` the rotation matrices, `f32_max` float32's largest value.
#[pyfunction]
fn metadata_features<'py>(
    py: Python<'py>,
    candidate: &Bound<'py, PyAny>,
    names: &Bound<'py, PyTuple>,
    ecliptic: [[f64; 3]; 3],
    galactic: [[f64; 3]; 3],
    f32_max: f64,
) -> Option<Bound<'py, PyByteArray>> {
    let get = |name: &Bound<'py, PyAny>| -> R<Bound<'py, PyAny>> {
        match candidate.get_item(name) {
            Ok(v) => Ok(v),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(py) => Ok(py.None().into_bound(py)),
            Err(_) => Err(Bail),
        }
    };
    let compute = || -> R<Vec<f32>> {
        let value = |name: &str| -> R<f64> { number(&get(PyString::new(py, name).as_any())?, f32_max) };
        let (ra, dec) = (value("ra")?, value("dec")?);
        let (ecl, gal) = if ra.is_finite() && dec.is_finite() {
            (rotate(ra, dec, &ecliptic), rotate(ra, dec, &galactic))
        } else {
            ((f64::NAN, f64::NAN), (f64::NAN, f64::NAN))
        };
        let mut out = Vec::with_capacity(names.len());
        for key in names.iter() {
            let name = key.cast::<PyString>().map_err(|_| Bail)?.to_str().map_err(|_| Bail)?;
            let v = match name {
                "isdiffpos" => isdiffpos(&get(&key)?)?,
                "ecl_lat" => ecl.0,
                "ecl_long" => ecl.1,
                "gal_lat" => gal.0,
                "gal_long" => gal.1,
                "non_detections" => value("ncovhist")? - value("ndethist")?,
                _ => number(&get(&key)?, f32_max)?,
            };
            out.push(v as f32);
        }
        Ok(out)
    };
    let values = compute().ok()?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    Some(PyByteArray::new(py, &bytes))
}

#[pymodule]
fn stamp_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Program>()?;
    m.add_function(wrap_pyfunction!(prepare_cutouts, m)?)?;
    m.add_function(wrap_pyfunction!(metadata_features, m)?)?;
    Ok(())
}
