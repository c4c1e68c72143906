//! Choosing the candle device a recipe asks for.
use crate::recipe::DeviceChoice;
use candle_core::Device;

/// The device for `choice`, and a notice when "auto" fell back to the CPU.
pub fn select(choice: DeviceChoice) -> Result<(Device, Option<String>), String> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, None)),
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(device) => Ok((device, None)),
                    Err(e) => Ok((
                        Device::Cpu,
                        Some(format!("no usable CUDA device ({}); running on the CPU", first_line(&e))),
                    )),
                }
            } else {
                Ok((Device::Cpu, None))
            }
        }
        DeviceChoice::Cuda(ordinal) => {
            if !cfg!(feature = "cuda") {
                return Err(format!(
                    "the recipe asks for device \"cuda:{ordinal}\" but this build has no CUDA support \
                     (rebuild with `--features cuda`, or set device = \"auto\" or \"cpu\")"
                ));
            }
            Device::new_cuda(ordinal)
                .map(|d| (d, None))
                .map_err(|e| format!("cannot open CUDA device {ordinal}: {}", first_line(&e)))
        }
    }
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
        let message = select(DeviceChoice::Cuda(1)).unwrap_err();
        assert!(message.contains("\"cuda:1\"") && message.contains("--features cuda"), "{message}");
    }
}
