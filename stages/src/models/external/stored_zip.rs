//! The entries of a zip archive whose entries are stored (not compressed), as PyTorch writes
//! checkpoints: a small reader of the central directory (zip64 included) over the file's bytes.
//!
//! Written here rather than taken from the `zip` crate: zip 9.8.2 (and candle's `.pth` reader
//! built on it) refuses some archives PyTorch writes ("Invalid Central Directory header";
//! seen with a checkpoint whose archive folder name has 21 characters, whatever its contents),
//! which `torch.load` and Python's `zipfile` read.
use std::collections::BTreeMap;
use std::ops::Range;

fn u16_at(b: &[u8], at: usize) -> Result<usize, String> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize).ok_or_else(|| truncated(at))
}

fn u32_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
        .ok_or_else(|| truncated(at))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("eight bytes")))
        .ok_or_else(|| truncated(at))
}

fn truncated(at: usize) -> String {
    format!("the archive ends before byte {at}")
}

fn offset(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("offset {v} does not fit in memory"))
}

/// Each entry's name and the byte range of its (stored) data.
pub fn entries(b: &[u8]) -> Result<BTreeMap<String, Range<usize>>, String> {
    // The end-of-central-directory record: its signature, searched from the end (a comment of
    // up to 65,535 bytes may follow it).
    let floor = b.len().saturating_sub(22 + 65_535);
    let eocd = (floor..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| b[i..i + 4] == *b"PK\x05\x06")
        .ok_or("no end-of-central-directory record (not a zip archive)")?;
    let (mut count, mut cd_offset) = (u16_at(b, eocd + 10)? as u64, u32_at(b, eocd + 16)?);
    if count == 0xFFFF || cd_offset == 0xFFFF_FFFF {
        // zip64: the locator just before points at the zip64 end record.
        let locator =
            eocd.checked_sub(20).filter(|&l| b[l..l + 4] == *b"PK\x06\x07").ok_or("no zip64 locator")?;
        let record = offset(u64_at(b, locator + 8)?)?;
        if b.get(record..record + 4) != Some(b"PK\x06\x06") {
            return Err("the zip64 end record is not where its locator says".into());
        }
        count = u64_at(b, record + 32)?;
        cd_offset = u64_at(b, record + 48)?;
    }
    let mut out = BTreeMap::new();
    let mut at = offset(cd_offset)?;
    for _ in 0..count {
        if b.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err(format!("no central directory entry at byte {at}"));
        }
        let method = u16_at(b, at + 10)?;
        let mut size = u32_at(b, at + 20)?;
        let mut uncompressed = u32_at(b, at + 24)?;
        let (name_len, extra_len, comment_len) =
            (u16_at(b, at + 28)?, u16_at(b, at + 30)?, u16_at(b, at + 32)?);
        let mut local = u32_at(b, at + 42)?;
        let name_bytes = b.get(at + 46..at + 46 + name_len).ok_or_else(|| truncated(at + 46 + name_len))?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // zip64 extended information: the 64-bit values of the fields saturated above, in order.
        let extra = b.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or_else(|| truncated(at))?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (u16_at(extra, e)?, u16_at(extra, e + 2)?);
            if id == 1 {
                let mut f = e + 4;
                for field in [&mut uncompressed, &mut size, &mut local] {
                    if *field == 0xFFFF_FFFF {
                        *field = u64_at(extra, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method != 0 || size != uncompressed {
            return Err(format!(
                "entry `{name}` is compressed (method {method}); PyTorch stores its entries"
            ));
        }
        let local = offset(local)?;
        if b.get(local..local + 4) != Some(b"PK\x03\x04") {
            return Err(format!("entry `{name}`: no local header at byte {local}"));
        }
        let start = local + 30 + u16_at(b, local + 26)? + u16_at(b, local + 28)?;
        let end =
            start.checked_add(offset(size)?).filter(|&end| end <= b.len()).ok_or_else(|| truncated(start))?;
        out.insert(name, start..end);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}
