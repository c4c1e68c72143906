//! How much memory this machine has, and checks that a size fits in it before anything is
//! allocated: a recipe that asks for a trillion noise images or a layer of a hundred million
//! channels is refused by `check`, and the allocations that remain fail as a stage's error
//! instead of aborting the process.
use crate::error::StageError;

/// Physical memory of this machine in bytes (Linux: `MemTotal` of /proc/meminfo), or `None`
/// where it cannot be read (then nothing is refused for its size).
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` in a short human unit.
pub fn human_bytes(bytes: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Why `bytes` (of `what`) cannot fit in this machine's memory, if it cannot; `None` when it
/// fits or the memory is unknown.
pub fn does_not_fit(what: &str, bytes: Option<u128>) -> Option<String> {
    let memory = host_memory_bytes()? as u128;
    match bytes {
        Some(bytes) if bytes <= memory => None,
        Some(bytes) => Some(format!(
            "{what} take {}, more than this machine's {}",
            human_bytes(bytes),
            human_bytes(memory)
        )),
        None => Some(format!("{what} take more bytes than a 128-bit count holds")),
    }
}

/// A vector with room for `len` values, or a stage error saying what did not fit (instead of
/// the allocator aborting the process).
pub fn try_vec<T>(len: usize, what: &str) -> Result<Vec<T>, StageError> {
    let mut values = Vec::new();
    values.try_reserve_exact(len).map_err(|_| {
        let bytes = (len as u128).saturating_mul(std::mem::size_of::<T>() as u128);
        StageError::Unsuitable(format!("cannot allocate {} for {what}", human_bytes(bytes)))
    })?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_judged_against_the_machine() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        if host_memory_bytes().is_some() {
            assert_eq!(does_not_fit("these", Some(1)), None);
            let message = does_not_fit("1e12 images", Some(3_136_000_000_000_000)).unwrap();
            assert!(message.contains("2.8 PiB"), "{message}");
            assert!(does_not_fit("these", None).is_some());
        }
        assert!(try_vec::<f32>(usize::MAX / 2, "a test").is_err());
        assert_eq!(try_vec::<f32>(10, "a test").unwrap().capacity(), 10);
    }
}
