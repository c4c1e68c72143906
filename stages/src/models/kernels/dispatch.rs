//! Whether the hand-written kernels apply to a tensor: f32 on the CPU. Every other device
//! (CUDA) runs candle's own ops instead; [`with_candle_ops`] makes this thread take that path on
//! the CPU too, so a test can check that both compute the same numbers.
use candle_core::Tensor;
use std::cell::Cell;

thread_local! {
    static CANDLE_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether `x` goes through the custom kernels.
pub fn custom_applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && !CANDLE_ONLY.with(Cell::get)
}

/// Runs `f` with candle's own ops in place of the custom kernels on this thread (the path other
/// devices take); the custom kernels apply again afterwards, even if `f` panics.
pub fn with_candle_ops<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            CANDLE_ONLY.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CANDLE_ONLY.with(|c| c.replace(true)));
    f()
}
