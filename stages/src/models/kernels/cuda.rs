//! The CUDA side of this crate's own ops: `cuda_kernels.cu`, compiled once per process with
//! NVRTC (which candle loads anyway) when a kernel is first needed, and launched on the
//! tensor's stream. Only in a build with the `cuda` feature.
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};
use std::sync::OnceLock;

const SOURCE: &str = include_str!("cuda_kernels.cu");
const MODULE: &str = "pipeline_kernels";

/// The PTX of [`SOURCE`], compiled on first use (and the compile error, kept).
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|ptx| ptx.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("cannot compile the pipeline's CUDA kernels: {e}")))
}

/// The contiguous f32 view of `storage` under `layout`, and its length.
fn contiguous(layout: &Layout, what: &str) -> Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} needs a contiguous tensor")))
}

/// Dropout of the mask with keys `k0`, `k1` and keep threshold (dropout.rs).
pub fn dropout(
    [k0, k1, threshold]: [u32; 3],
    scale: f32,
    storage: &CudaStorage,
    layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (start, end) = contiguous(layout, "dropout")?;
    let n = (end - start) as u32;
    let device = &storage.device;
    let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
    let func = device.get_or_load_custom_func("dropout_f32", MODULE, ptx()?)?;
    // SAFETY: every element is written by the kernel below.
    let dst = unsafe { device.alloc::<f32>(n as usize)? };
    let mut builder = func.builder();
    builder.arg(&src);
    builder.arg(&dst);
    builder.arg(&n);
    builder.arg(&k0);
    builder.arg(&k1);
    builder.arg(&threshold);
    builder.arg(&scale);
    // SAFETY: the kernel reads n floats of `src` and writes n of `dst`.
    unsafe { builder.launch(LaunchConfig::for_num_elems(n.max(1))) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(dst, device.clone()), layout.shape().clone()))
}

/// The top-fraction mask zeroing `zeroed` entries (top_fraction.rs).
pub fn top_fraction(zeroed: u32, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
    let (start, end) = contiguous(layout, "the top-fraction mask")?;
    let n = (end - start) as u32;
    let device = &storage.device;
    let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
    let func = device.get_or_load_custom_func("top_fraction_mask", MODULE, ptx()?)?;
    // SAFETY: every element is written by the kernel below.
    let dst = unsafe { device.alloc::<f32>(n as usize)? };
    let mut builder = func.builder();
    builder.arg(&src);
    builder.arg(&dst);
    builder.arg(&n);
    builder.arg(&zeroed);
    let config = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: one block of the 1024 threads the kernel's shared arrays are sized for.
    unsafe { builder.launch(config) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(dst, device.clone()), layout.shape().clone()))
}
