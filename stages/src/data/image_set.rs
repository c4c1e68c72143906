//! A loaded set of images ([`ImageSet`]: pixels in [0,1], labels, shape) and the splits a
//! dataset has ([`Split`]).

/// Which part of a dataset a stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images in memory: `n` samples of shape `(channels, height, width)`, pixels in [0,1],
/// row-major `n × c × h × w`; labels in `0..num_classes` (all 0 for unlabelled sets).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    pub shape: [usize; 3],
    pub num_classes: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn image(&self, index: usize) -> &[f32] {
        let size = self.image_size();
        &self.pixels[index * size..(index + 1) * size]
    }

    /// Per-channel mean and standard deviation over every pixel.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let [c, h, w] = self.shape;
        let plane = h * w;
        let mut means = Vec::with_capacity(c);
        let mut stds = Vec::with_capacity(c);
        for channel in 0..c {
            let (mut sum, mut sum_sq, mut count) = (0f64, 0f64, 0f64);
            for i in 0..self.len() {
                let start = i * c * plane + channel * plane;
                for &v in &self.pixels[start..start + plane] {
                    sum += v as f64;
                    sum_sq += (v as f64) * (v as f64);
                    count += 1.0;
                }
            }
            let mean = sum / count.max(1.0);
            let var = (sum_sq / count.max(1.0) - mean * mean).max(0.0);
            means.push(mean as f32);
            stds.push(var.sqrt().max(1e-6) as f32);
        }
        (means, stds)
    }
}
