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

/// The CUDA version the installed driver supports (`cuDriverGetVersion`, e.g. 13000 for 13.0)
/// and the version of the loaded cuBLAS (`major.minor.patch`), where they can be asked.
#[cfg(feature = "cuda")]
pub fn cuda_versions() -> (Option<String>, Option<String>) {
    use candle_core::cuda_backend::cudarc;
    let mut driver = 0i32;
    // SAFETY: writes one int; the driver library is loaded once a CUDA device is open.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    let driver = (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("{}.{}", driver / 1000, (driver % 1000) / 10));
    let mut parts = [0i32; 3];
    let kinds = [
        cudarc::cublas::sys::libraryPropertyType::MAJOR_VERSION,
        cudarc::cublas::sys::libraryPropertyType::MINOR_VERSION,
        cudarc::cublas::sys::libraryPropertyType::PATCH_LEVEL,
    ];
    let cublas_ok = kinds.into_iter().zip(parts.iter_mut()).all(|(kind, part)| {
        // SAFETY: writes one int; cuBLAS is loaded once candle has opened the device.
        let status = unsafe { cudarc::cublas::sys::cublasGetProperty(kind, part) };
        status == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
    });
    let cublas = cublas_ok.then(|| format!("{}.{}.{}", parts[0], parts[1], parts[2]));
    (driver, cublas)
}
