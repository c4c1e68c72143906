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
                    Err(e) => {
                        Ok((Device::Cpu, Some(format!("no usable CUDA device ({e}); running on the CPU"))))
                    }
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
                .map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))
        }
    }
}

/// A short name for manifests and messages.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
