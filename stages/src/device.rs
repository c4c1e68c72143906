//! Choosing the device a recipe asks for (`auto`, `cpu`, `cuda`, `cuda:N`): the engine names
//! devices through this module and never touches candle itself.
pub use candle_core::Device;

/// Where stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when built with it and a GPU is present, else CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Option<DeviceChoice> {
        match text {
            "auto" => Some(DeviceChoice::Auto),
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" => Some(DeviceChoice::Cuda(0)),
            other => other.strip_prefix("cuda:")?.parse().ok().map(DeviceChoice::Cuda),
        }
    }
}

/// Why the requested device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "the recipe asks for device \"cuda:{ordinal}\" but this build has no CUDA support \
         (rebuild with `--features cuda`, or set device = \"auto\" or \"cpu\")"
    )]
    NoCudaSupport { ordinal: usize },
    #[error("cannot open CUDA device {ordinal}: {message}")]
    Unavailable { ordinal: usize, message: String },
}

/// The device for `choice`, and a notice when "auto" fell back to the CPU.
pub fn select(choice: DeviceChoice) -> Result<(Device, Option<String>), DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, None)),
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") {
                match open_cuda(0) {
                    Ok(device) => Ok((device, None)),
                    Err(message) => Ok((
                        Device::Cpu,
                        Some(format!("no usable CUDA device ({message}); running on the CPU")),
                    )),
                }
            } else {
                Ok((Device::Cpu, None))
            }
        }
        DeviceChoice::Cuda(ordinal) => {
            if !cfg!(feature = "cuda") {
                return Err(DeviceError::NoCudaSupport { ordinal });
            }
            open_cuda(ordinal)
                .map(|d| (d, None))
                .map_err(|message| DeviceError::Unavailable { ordinal, message })
        }
    }
}

/// Opens CUDA device `ordinal`, first making sure (in a build that loads CUDA at run time) that
/// the libraries candle will call can be loaded: a missing one would otherwise be a panic deep
/// inside the first kernel launch or matrix product.
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    let missing = crate::models::kernels::cuda_libraries::missing_cuda_libraries();
    if !missing.is_empty() {
        return Err(format!(
            "cannot load {} (install the NVIDIA driver, and put the CUDA 13 libraries on \
             LD_LIBRARY_PATH)",
            missing.join(", ")
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| first_line(&e))
}

/// The message of a candle error without the backtrace candle appends when RUST_BACKTRACE is
/// set.
fn first_line(error: &candle_core::Error) -> String {
    error.to_string().lines().next().unwrap_or_default().to_string()
}

/// A short name for manifests and messages.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        assert!(matches!(select(DeviceChoice::Cpu), Ok((Device::Cpu, None))));
    }

    /// Without the `cuda` feature, "auto" is the CPU without a notice and a CUDA request is an
    /// error that says how to get CUDA support.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_cuda_feature_cuda_requests_fail_clearly() {
        assert!(matches!(select(DeviceChoice::Auto), Ok((Device::Cpu, None))));
        let message = select(DeviceChoice::Cuda(1)).unwrap_err().to_string();
        assert!(message.contains("\"cuda:1\"") && message.contains("--features cuda"), "{message}");
    }
}
