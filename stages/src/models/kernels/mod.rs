//! CPU kernels written by hand for speed: the convolution as im2col + gemm ([`conv`]), batch
//! norm + ReLU in one pass ([`fused_bn`]), the buffers they share ([`buffers`]), and when they apply ([`dispatch`]). All the
//! crate's `unsafe` code lives here.
pub(crate) mod buffers;
pub mod conv;
pub mod dispatch;
pub mod fused_bn;
