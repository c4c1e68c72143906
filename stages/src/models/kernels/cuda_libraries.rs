//! Whether the CUDA libraries candle will call can be loaded, in a build that loads them at
//! run time (`cuda-dynamic-loading`): asked before a CUDA device is opened
//! (by `device.rs`), since a missing one would otherwise be a panic deep inside the first
//! kernel launch or matrix product.

/// The CUDA libraries this build needs and cannot find. A build that links them (plain
/// `--features cuda`) cannot start without them, so it finds none missing.
#[cfg(feature = "cuda-dynamic-loading")]
pub fn missing_cuda_libraries() -> Vec<&'static str> {
    use candle_core::cuda_backend::cudarc;
    // SAFETY: each call only tries to dlopen the library under its usual names and closes it.
    let present = unsafe {
        [
            ("libcuda (the NVIDIA driver)", cudarc::driver::sys::is_culib_present()),
            ("libcublas", cudarc::cublas::sys::is_culib_present()),
            ("libcublasLt", cudarc::cublaslt::sys::is_culib_present()),
            ("libcurand", cudarc::curand::sys::is_culib_present()),
            ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    present.into_iter().filter(|(_, found)| !found).map(|(name, _)| name).collect()
}

/// The CUDA libraries this build needs and cannot find: none, in a build that does not load
/// them at run time.
#[cfg(not(feature = "cuda-dynamic-loading"))]
pub fn missing_cuda_libraries() -> Vec<&'static str> {
    Vec::new()
}
