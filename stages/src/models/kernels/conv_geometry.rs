//! The sizes of one 2-D convolution (no bias, the same stride and padding on both axes), as
//! the cuDNN ops (`cudnn_conv`) and their calls (`cudnn.rs`) share them, with the one loop of
//! the ops' CPU reference.
use candle_core::{Result, Shape, Tensor};

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Geometry {
    pub fn of(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Geometry> {
        let (n, c, h, w) = x.dims4()?;
        let (o, c_w, kh, kw) = weight.dims4()?;
        if c != c_w || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
            candle_core::bail!(
                "conv2d: input {:?} and weight {:?} (stride {stride}, padding {padding}) do not fit",
                x.dims(),
                weight.dims()
            );
        }
        Ok(Geometry { n, c, h, w, o, kh, kw, stride, padding })
    }

    /// Output height and width.
    pub fn output(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.padding - self.kh) / self.stride + 1,
            (self.w + 2 * self.padding - self.kw) / self.stride + 1,
        )
    }

    pub fn input_shape(&self) -> Shape {
        Shape::from((self.n, self.c, self.h, self.w))
    }

    pub fn weight_shape(&self) -> Shape {
        Shape::from((self.o, self.c, self.kh, self.kw))
    }

    pub fn output_shape(&self) -> Shape {
        let (ho, wo) = self.output();
        Shape::from((self.n, self.o, ho, wo))
    }

    /// Calls `f(input index, weight index, output index)` for every product of the
    /// convolution (the CPU reference's one loop).
    pub fn each_product(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (ho, wo) = self.output();
        for b in 0..self.n {
            for o in 0..self.o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let out = ((b * self.o + o) * ho + oy) * wo + ox;
                        for c in 0..self.c {
                            for ky in 0..self.kh {
                                let Some(iy) = (oy * self.stride + ky).checked_sub(self.padding) else {
                                    continue;
                                };
                                if iy >= self.h {
                                    continue;
                                }
                                for kx in 0..self.kw {
                                    let Some(ix) = (ox * self.stride + kx).checked_sub(self.padding) else {
                                        continue;
                                    };
                                    if ix >= self.w {
                                        continue;
                                    }
                                    let input = ((b * self.c + c) * self.h + iy) * self.w + ix;
                                    let weight = ((o * self.c + c) * self.kh + ky) * self.kw + kx;
                                    f(input, weight, out);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
