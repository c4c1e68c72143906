//! CPU kernels written by hand for speed: the convolution as im2col + gemm ([`conv`]), batch
//! norm + ReLU in one pass ([`fused_bn`]), the buffers they share (`buffers`), and when they
//! apply ([`dispatch`]); the ops computed where the tensor lives, on the CPU and in this crate's
//! own CUDA kernels (`cuda.rs`): dropout masks ([`dropout`]), UMAP's top-fraction masks
//! ([`top_fraction`]) and batch norm + ReLU on the device ([`device_bn`]); convolutions through cuDNN on
//! CUDA ([`cudnn_conv`], its calls in `cudnn.rs`); with the two other calls that need `unsafe`: the allocator settings of
//! the binary ([`allocator`]) and the probe for CUDA libraries loaded at run time
//! ([`cuda_libraries`]). All the crate's `unsafe` code lives here: the crate denies
//! `unsafe_code` everywhere else.
/// Compiles each item it wraps three times, for AVX-512 (the Ice Lake / Zen 4 set: multiversion
/// asks for all of it, to keep off older parts that slow down under AVX-512), for AVX2 and for
/// the binary's SSE2 baseline, and picks one at run time by CPU. For element loops whose values
/// do not depend on the vector width: the same operations in the same order (Rust never fuses a
/// multiply and an add).
macro_rules! cpu_variants {
    ($($item:item)*) => {$(
        #[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
        $item
    )*};
}

pub mod allocator;
pub(crate) mod buffers;
pub mod conv;
pub mod conv_geometry;
#[cfg(feature = "cuda")]
mod cuda;
pub mod cuda_libraries;
#[cfg(feature = "cudnn")]
mod cudnn;
pub mod cudnn_conv;
pub mod device_bn;
pub mod dispatch;
pub mod dropout;
pub mod fused_bn;
pub mod top_fraction;
