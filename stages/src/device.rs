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

/// The version of candle this build computes with (checked against Cargo.lock by a test).
pub const CANDLE_VERSION: &str = "0.11.1";

/// What kind of device computed a result: recorded in every cache entry's manifest and in a
/// training's resume state, so a resumed training on another class of device says so (its
/// numbers then differ in the last bits from an uninterrupted run's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceClass {
    /// `cpu` or `cuda`.
    pub kind: String,
    /// The CPU's model name, or the GPU's.
    pub name: String,
    /// The GPU's compute capability (`9.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// The CUDA version the driver supports, and cuBLAS's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_cuda: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cublas: Option<String>,
    /// cuDNN's version where convolutions use it (none where it is not loaded: candle's
    /// im2col + cuBLAS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cudnn: Option<String>,
    pub candle: String,
}

impl DeviceClass {
    /// One line for messages: `cuda NVIDIA H200 (9.0)`, `cpu Intel Xeon …`.
    pub fn line(&self) -> String {
        match &self.compute_capability {
            Some(cc) => format!("{} {} (compute {cc})", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// The class of `device`.
pub fn class(device: &Device) -> DeviceClass {
    let mut class = DeviceClass {
        kind: describe(device),
        name: String::new(),
        compute_capability: None,
        driver_cuda: None,
        cublas: None,
        cudnn: None,
        candle: CANDLE_VERSION.to_string(),
    };
    match device {
        Device::Cpu => {
            class.name = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, name)| name.trim().to_string())
                })
                .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let context = cuda.cuda_stream().context().clone();
            class.name = context.name().unwrap_or_else(|_| "unknown GPU".into());
            class.compute_capability =
                context.compute_capability().ok().map(|(major, minor)| format!("{major}.{minor}"));
            (class.driver_cuda, class.cublas) = crate::models::kernels::cuda_libraries::cuda_versions();
            class.cudnn = crate::models::kernels::cudnn_conv::cudnn_version();
        }
        _ => class.name = describe(device),
    }
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_class_names_the_processor_and_candle_matches_the_lock_file() {
        let class = class(&Device::Cpu);
        assert_eq!(class.kind, "cpu");
        assert!(!class.name.is_empty());
        assert!(class.compute_capability.is_none() && class.cudnn.is_none());
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let entry = format!("name = \"candle-core\"\nversion = \"{CANDLE_VERSION}\"");
        assert!(lock.contains(&entry), "Cargo.lock has another candle-core than {CANDLE_VERSION}");
        let text = serde_json::to_string(&class).unwrap();
        assert_eq!(serde_json::from_str::<DeviceClass>(&text).unwrap(), class);
    }

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
