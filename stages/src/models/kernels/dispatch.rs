//! Which kernels compute a layer. f32 on the CPU goes through the hand-written CPU kernels
//! (`conv`, `fused_bn`); f32 on CUDA through this crate's device kernels where it has them
//! (`device_bn`), candle's own ops elsewhere. Two switches per thread, for tests and
//! `pipeline check-ops`: [`with_candle_ops`] takes candle's ops everywhere (the fallback), and
//! [`with_device_kernels`] makes the CPU take the path CUDA takes (the device kernels' CPU
//! implementations, candle's ops for the rest), so that both can be compared on any machine.
use candle_core::Tensor;
use std::cell::Cell;

/// The path this thread's layers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// By device: the CPU kernels on the CPU, the device kernels on CUDA.
    ByDevice,
    /// candle's ops everywhere.
    CandleOps,
    /// The device kernels everywhere, candle's ops where there are none (CUDA's path).
    DeviceKernels,
}

thread_local! {
    static PATH: Cell<Path> = const { Cell::new(Path::ByDevice) };
}

/// Whether `x` goes through the CPU kernels.
pub fn custom_applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && PATH.with(Cell::get) == Path::ByDevice
}

/// Whether `x` goes through the device kernels.
pub fn device_kernels_apply(x: &Tensor) -> bool {
    x.dtype() == candle_core::DType::F32
        && match PATH.with(Cell::get) {
            Path::ByDevice => x.device().is_cuda(),
            Path::DeviceKernels => true,
            Path::CandleOps => false,
        }
}

/// Runs `f` with `path` on this thread; the previous path applies again afterwards, even if
/// `f` panics.
fn with_path<T>(path: Path, f: impl FnOnce() -> T) -> T {
    struct Reset(Path);
    impl Drop for Reset {
        fn drop(&mut self) {
            PATH.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(PATH.with(|c| c.replace(path)));
    f()
}

/// Runs `f` with candle's own ops in place of the custom kernels on this thread.
pub fn with_candle_ops<T>(f: impl FnOnce() -> T) -> T {
    with_path(Path::CandleOps, f)
}

/// Runs `f` on the path CUDA takes, whatever the device: the device kernels (on the CPU, their
/// CPU implementations) and candle's ops for the rest.
pub fn with_device_kernels<T>(f: impl FnOnce() -> T) -> T {
    with_path(Path::DeviceKernels, f)
}
