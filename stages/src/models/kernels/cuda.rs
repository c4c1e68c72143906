//! The CUDA side of this crate's own ops: `cuda_kernels.cu`, compiled once per process with
//! NVRTC (which candle loads anyway) when a kernel is first needed, and launched on the
//! tensor's stream: dropout and UMAP masks, and batch norm + ReLU's four kernels. Only in a
//! build with the `cuda` feature.
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape, Storage, Tensor};
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

/// A tensor's f32 CUDA storage, held for reading while a kernel using it is launched.
struct Held<'a> {
    guard: candle_core::StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Held<'a> {
    fn new(t: &'a Tensor) -> Held<'a> {
        let (guard, layout) = t.storage_and_layout();
        Held { guard, layout }
    }

    fn view(&self, what: &str) -> Result<CudaView<'_, f32>> {
        let Storage::Cuda(storage) = &*self.guard else {
            candle_core::bail!("{what}: the tensor is not on the CUDA device of the op's input");
        };
        let (start, end) = contiguous(self.layout, what)?;
        Ok(storage.as_cuda_slice::<f32>()?.slice(start..end))
    }
}

/// The f32 view of one of a custom op's inputs.
fn input<'a>((storage, layout): (&'a CudaStorage, &Layout), what: &str) -> Result<CudaView<'a, f32>> {
    let (start, end) = contiguous(layout, what)?;
    Ok(storage.as_cuda_slice::<f32>()?.slice(start..end))
}

/// A grid-stride launch over `total` elements.
fn elementwise(total: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(total.clamp(1, u32::MAX as usize) as u32)
}

/// One block of the batch-norm reductions' threads per channel.
fn per_channel(c: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (c.max(1), 1, 1), block_dim: (BN_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Threads of a batch-norm reduction block (`BN_THREADS` in the kernels' source).
const BN_THREADS: u32 = 256;

/// Per-channel `[mean; biased variance]` of an `(n, c, hw)` activation (device_bn.rs).
pub fn bn_moments(
    [n, c, hw]: [u32; 3],
    storage: &CudaStorage,
    layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let device = &storage.device;
    let x = input((storage, layout), "batch norm moments")?;
    let func = device.get_or_load_custom_func("bn_moments", MODULE, ptx()?)?;
    // SAFETY: every one of the 2c values is written by the kernel below (thread 0 of each block).
    let stats = unsafe { device.alloc::<f32>(2 * c as usize)? };
    let mut builder = func.builder();
    builder.arg(&x).arg(&stats).arg(&n).arg(&c).arg(&hw);
    // SAFETY: c blocks of BN_THREADS threads, reading n·c·hw floats and writing 2c.
    unsafe { builder.launch(per_channel(c)) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(stats, device.clone()), Shape::from((2, c as usize))))
}

/// The batch norm's forward output from (x, γ, β) and the statistics (device_bn.rs).
pub fn bn_normalise(
    [n, c, hw]: [u32; 3],
    eps: f64,
    relu: bool,
    [x, gamma, beta]: [(&CudaStorage, &Layout); 3],
    stats: &Tensor,
) -> Result<(CudaStorage, Shape)> {
    let device = &x.0.device;
    let shape = x.1.shape().clone();
    let total = shape.elem_count();
    let (x, gamma, beta) =
        (input(x, "batch norm")?, input(gamma, "batch norm scale")?, input(beta, "batch norm shift")?);
    let stats = Held::new(stats);
    let stats = stats.view("batch norm statistics")?;
    let func = device.get_or_load_custom_func("bn_normalise", MODULE, ptx()?)?;
    // SAFETY: every element is written by the kernel below.
    let y = unsafe { device.alloc::<f32>(total)? };
    let relu = relu as i32;
    let mut builder = func.builder();
    builder.arg(&x).arg(&gamma).arg(&beta).arg(&stats).arg(&y);
    builder.arg(&n).arg(&c).arg(&hw).arg(&eps).arg(&relu);
    // SAFETY: a grid-stride loop over the n·c·hw elements of x and y.
    unsafe { builder.launch(elementwise(total)) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(y, device.clone()), shape))
}

/// Per-channel `[Σ g; Σ g·x̂]` from (x, y, ∂L/∂y) (device_bn.rs).
pub fn bn_gradient_sums(
    [n, c, hw]: [u32; 3],
    eps: f64,
    relu: bool,
    [x, y, g]: [(&CudaStorage, &Layout); 3],
    stats: &Tensor,
) -> Result<(CudaStorage, Shape)> {
    let device = &x.0.device;
    let what = "batch norm backward";
    let (x, y, g) = (input(x, what)?, input(y, what)?, input(g, what)?);
    let stats = Held::new(stats);
    let stats = stats.view("batch norm statistics")?;
    let func = device.get_or_load_custom_func("bn_gradient_sums", MODULE, ptx()?)?;
    // SAFETY: every one of the 2c values is written by the kernel below (thread 0 of each block).
    let sums = unsafe { device.alloc::<f32>(2 * c as usize)? };
    let relu = relu as i32;
    let mut builder = func.builder();
    builder.arg(&x).arg(&y).arg(&g).arg(&stats).arg(&sums);
    builder.arg(&n).arg(&c).arg(&hw).arg(&eps).arg(&relu);
    // SAFETY: c blocks of BN_THREADS threads, reading n·c·hw floats of each input, writing 2c.
    unsafe { builder.launch(per_channel(c)) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(sums, device.clone()), Shape::from((2, c as usize))))
}

/// ∂L/∂x of the batch norm from (x, y, ∂L/∂y), the statistics, γ and, with batch statistics,
/// the channel sums (device_bn.rs).
pub fn bn_input_gradient(
    [n, c, hw]: [u32; 3],
    eps: f64,
    relu: bool,
    [x, y, g]: [(&CudaStorage, &Layout); 3],
    [stats, gamma]: [&Tensor; 2],
    sums: Option<&Tensor>,
) -> Result<(CudaStorage, Shape)> {
    let device = &x.0.device;
    let shape = x.1.shape().clone();
    let total = shape.elem_count();
    let what = "batch norm backward";
    let (x, y, g) = (input(x, what)?, input(y, what)?, input(g, what)?);
    let (held_stats, held_gamma) = (Held::new(stats), Held::new(gamma));
    let (stats, gamma) = (held_stats.view("batch norm statistics")?, held_gamma.view("batch norm scale")?);
    // Without batch statistics the kernel does not read the sums: the statistics stand in.
    let sums = sums.map(Held::new);
    let sums_view = match &sums {
        Some(held) => held.view("batch norm gradient sums")?,
        None => held_stats.view("batch norm statistics")?,
    };
    let func = device.get_or_load_custom_func("bn_input_gradient", MODULE, ptx()?)?;
    // SAFETY: every element is written by the kernel below.
    let dx = unsafe { device.alloc::<f32>(total)? };
    let (relu, batch) = (relu as i32, sums.is_some() as i32);
    let mut builder = func.builder();
    builder.arg(&x).arg(&y).arg(&g).arg(&stats).arg(&gamma).arg(&sums_view).arg(&dx);
    builder.arg(&n).arg(&c).arg(&hw).arg(&eps).arg(&relu).arg(&batch);
    // SAFETY: a grid-stride loop over the n·c·hw elements of x, y, g and dx.
    unsafe { builder.launch(elementwise(total)) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(dx, device.clone()), shape))
}
