//! The cuDNN calls behind `cudnn_conv.rs` (only in a build with the `cudnn` feature): one handle
//! per thread and device on the device's stream (cuDNN handles are not thread-safe), f32
//! NCHW descriptors with `CUDNN_FMA_MATH` (no TF32), and per geometry the algorithm cuDNN's
//! heuristics rank first, replaced by `ALGO_1` where that one is not deterministic (the
//! backward passes' `ALGO_0` and the filter's `ALGO_3` add with atomics).
use super::conv_geometry::Geometry;
use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::cudnn::{
    sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
    TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The loaded cuDNN's version (`major.minor.patch`), or none when it cannot be loaded.
pub fn version() -> Option<String> {
    static VERSION: OnceLock<Option<String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            #[cfg(feature = "cuda-dynamic-loading")]
            {
                // SAFETY: only tries to load the library under its usual names.
                if !unsafe { sys::is_culib_present() } {
                    return None;
                }
            }
            // SAFETY: a query without arguments of the loaded library.
            let v = unsafe { sys::cudnnGetVersion() };
            Some(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
        })
        .clone()
}

/// The algorithm chosen for each geometry, per pass.
type Chosen<A> = RefCell<HashMap<Geometry, A>>;

thread_local! {
    static HANDLES: RefCell<HashMap<candle_core::cuda_backend::DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static FORWARD: Chosen<sys::cudnnConvolutionFwdAlgo_t> = RefCell::new(HashMap::new());
    static DATA: Chosen<sys::cudnnConvolutionBwdDataAlgo_t> = RefCell::new(HashMap::new());
    static FILTER: Chosen<sys::cudnnConvolutionBwdFilterAlgo_t> = RefCell::new(HashMap::new());
}

fn error(what: &str) -> impl Fn(cudarc::cudnn::result::CudnnError) -> candle_core::Error + '_ {
    move |e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}"))
}

/// This thread's cuDNN handle for `device`, on its stream.
fn handle(device: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|handles| {
        if let Some(h) = handles.borrow().get(&device.id()) {
            return Ok(h.clone());
        }
        let h = Cudnn::new(device.cuda_stream()).map_err(error("handle"))?;
        handles.borrow_mut().insert(device.id(), h.clone());
        Ok(h)
    })
}

/// The descriptors of one convolution: x, w, y and the convolution itself.
struct Descriptors {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
}

fn descriptors(cudnn: &Arc<Cudnn>, g: &Geometry) -> Result<Descriptors> {
    let int = |v: usize| {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("cuDNN: a size of {v} does not fit an int")))
    };
    let (ho, wo) = g.output();
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let (p, s) = (int(g.padding)?, int(g.stride)?);
    let mut conv = cudnn
        .create_conv2d::<f32>([p, p], [s, s], [1, 1], sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)
        .map_err(error("convolution descriptor"))?;
    conv.set_math_type(sys::cudnnMathType_t::CUDNN_FMA_MATH).map_err(error("math type"))?;
    let x = cudnn
        .create_4d_tensor::<f32>(nchw, [int(g.n)?, int(g.c)?, int(g.h)?, int(g.w)?])
        .map_err(error("input descriptor"))?;
    let w = cudnn
        .create_4d_filter::<f32>(nchw, [int(g.o)?, int(g.c)?, int(g.kh)?, int(g.kw)?])
        .map_err(error("filter descriptor"))?;
    let y = cudnn
        .create_4d_tensor::<f32>(nchw, [int(g.n)?, int(g.o)?, int(ho)?, int(wo)?])
        .map_err(error("output descriptor"))?;
    Ok(Descriptors { conv, x, w, y })
}

/// The algorithm for `g` from `chosen`, or else `pick()` (falling back to `fallback` when the
/// heuristics give nothing) with the non-deterministic ones (`racy`) replaced by `fallback`.
fn algorithm<A: Copy + PartialEq + 'static>(
    chosen: &'static std::thread::LocalKey<Chosen<A>>,
    g: &Geometry,
    pick: impl FnOnce() -> Option<A>,
    fallback: A,
    racy: &[A],
) -> A {
    chosen.with(|cache| {
        *cache.borrow_mut().entry(*g).or_insert_with(|| match pick() {
            Some(a) if !racy.contains(&a) => a,
            _ => fallback,
        })
    })
}

/// The contiguous f32 view of a custom op's input.
fn view<'a>((storage, layout): (&'a CudaStorage, &Layout), what: &str) -> Result<CudaView<'a, f32>> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} needs a contiguous tensor")))?;
    Ok(storage.as_cuda_slice::<f32>()?.slice(start..end))
}

/// A workspace of `bytes` (none for 0).
fn workspace(device: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    // SAFETY: cuDNN uses the workspace as scratch space; nothing reads it before writing.
    Ok(if bytes == 0 { None } else { Some(unsafe { device.alloc::<u8>(bytes)? }) })
}

/// y = x ⋆ w.
pub fn forward(g: &Geometry, x: (&CudaStorage, &Layout), w: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    use sys::cudnnConvolutionFwdAlgo_t as A;
    let device = x.0.device.clone();
    let cudnn = handle(&device)?;
    let d = descriptors(&cudnn, g)?;
    let op = ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
    // Every forward algorithm is deterministic.
    let algo = algorithm(
        &FORWARD,
        g,
        || op.pick_algorithm().ok(),
        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        &[],
    );
    let mut space = workspace(&device, op.get_workspace_size(algo).map_err(error("forward workspace"))?)?;
    let (x, w) = (view(x, "conv2d")?, view(w, "conv2d weight")?);
    let (ho, wo) = g.output();
    // SAFETY: every output value is written (beta = 0).
    let mut y = unsafe { device.alloc::<f32>(g.n * g.o * ho * wo)? };
    // SAFETY: the buffers have the sizes and layout (contiguous NCHW f32) of the descriptors.
    unsafe { op.launch(algo, space.as_mut(), (1f32, 0f32), &x, &w, &mut y) }.map_err(error("forward"))?;
    Ok(CudaStorage::wrap_cuda_slice(y, device))
}

/// ∂L/∂x from (∂L/∂y, w).
pub fn backward_data(
    g: &Geometry,
    dy: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    use sys::cudnnConvolutionBwdDataAlgo_t as A;
    let device = dy.0.device.clone();
    let cudnn = handle(&device)?;
    let d = descriptors(&cudnn, g)?;
    let op = ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
    let algo = algorithm(
        &DATA,
        g,
        || op.pick_algorithm().ok(),
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        &[A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0],
    );
    let mut space =
        workspace(&device, op.get_workspace_size(algo).map_err(error("backward-data workspace"))?)?;
    let (dy, w) = (view(dy, "conv2d backward")?, view(w, "conv2d weight")?);
    // SAFETY: every input-gradient value is written (beta = 0).
    let mut dx = unsafe { device.alloc::<f32>(g.n * g.c * g.h * g.w)? };
    // SAFETY: the buffers have the sizes and layout (contiguous NCHW f32) of the descriptors.
    unsafe { op.launch(algo, space.as_mut(), (1f32, 0f32), &mut dx, &w, &dy) }
        .map_err(error("backward data"))?;
    Ok(CudaStorage::wrap_cuda_slice(dx, device))
}

/// ∂L/∂w from (x, ∂L/∂y).
pub fn backward_filter(
    g: &Geometry,
    x: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    use sys::cudnnConvolutionBwdFilterAlgo_t as A;
    let device = x.0.device.clone();
    let cudnn = handle(&device)?;
    let d = descriptors(&cudnn, g)?;
    let op = ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
    let algo = algorithm(
        &FILTER,
        g,
        || op.pick_algorithm().ok(),
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        &[A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3],
    );
    let mut space =
        workspace(&device, op.get_workspace_size(algo).map_err(error("backward-filter workspace"))?)?;
    let (x, dy) = (view(x, "conv2d backward")?, view(dy, "conv2d backward")?);
    // SAFETY: every weight-gradient value is written (beta = 0).
    let mut dw = unsafe { device.alloc::<f32>(g.o * g.c * g.kh * g.kw)? };
    // SAFETY: the buffers have the sizes and layout (contiguous NCHW f32) of the descriptors.
    unsafe { op.launch(algo, space.as_mut(), (1f32, 0f32), &x, &mut dw, &dy) }
        .map_err(error("backward filter"))?;
    Ok(CudaStorage::wrap_cuda_slice(dw, device))
}
