//! A loaded set of images ([`ImageSet`]: pixels in [0, 1], labels, shape) and the splits a
//! dataset has ([`Split`]), and the image set as batches of tensors.
use crate::error::StageError;
use candle_core::{Device, Tensor};

/// Which part of a dataset a stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// Images in memory: `n` samples of shape `(channels, height, width)`, pixels in [0, 1],
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

    /// Every image in order, in consecutive `(n, c, h, w)` batches of at most `batch_size`
    /// (at least 1) on `device`.
    pub fn batches<'a>(
        &'a self,
        batch_size: usize,
        device: &'a Device,
    ) -> impl Iterator<Item = Result<Tensor, StageError>> + 'a {
        let [c, h, w] = self.shape;
        let size = self.image_size();
        let batch_size = batch_size.max(1);
        (0..self.len()).step_by(batch_size).map(move |start| {
            let end = (start + batch_size).min(self.len());
            let pixels = self.pixels[start * size..end * size].to_vec();
            Ok(Tensor::from_vec(pixels, (end - start, c, h, w), device)?)
        })
    }

    /// How many batches [`ImageSet::batches`] gives.
    pub fn batch_count(&self, batch_size: usize) -> usize {
        self.len().div_ceil(batch_size.max(1))
    }

    /// The images `indices`, in that order, as one `(n, c, h, w)` tensor on `device`.
    pub fn gather(&self, indices: &[usize], device: &Device) -> Result<Tensor, StageError> {
        let [c, h, w] = self.shape;
        let pixels: Vec<f32> = indices.iter().flat_map(|&i| self.image(i).iter().copied()).collect();
        Ok(crate::transfer::upload(pixels, (indices.len(), c, h, w), device)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(count: usize) -> ImageSet {
        // Image i is filled with the value i: shape 1×2×2.
        let pixels = (0..count).flat_map(|i| [i as f32; 4]).collect();
        ImageSet { pixels, labels: vec![0; count], shape: [1, 2, 2], num_classes: 1 }
    }

    #[test]
    fn batches_cover_every_image_in_order_and_gather_picks_images() {
        let set = numbered(5);
        let batches: Vec<Tensor> = set.batches(2, &Device::Cpu).collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.len(), set.batch_count(2));
        let dims: Vec<Vec<usize>> = batches.iter().map(|b| b.dims().to_vec()).collect();
        assert_eq!(dims, [vec![2, 1, 2, 2], vec![2, 1, 2, 2], vec![1, 1, 2, 2]]);
        let firsts: Vec<f32> = batches
            .iter()
            .flat_map(|b| b.flatten_from(1).unwrap().max(1).unwrap().to_vec1::<f32>().unwrap())
            .collect();
        assert_eq!(firsts, [0.0, 1.0, 2.0, 3.0, 4.0]);
        let picked =
            set.gather(&[4, 0], &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(picked, [4.0, 4.0, 4.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(set.batch_count(0), 5, "a batch size of 0 counts as 1");
    }
}
