//! The device boundary of training: every read of a tensor's values into host memory (on an
//! asynchronous device each one waits for all queued work: a sync) and every upload of host
//! values onto a device goes through here, and is counted on the calling thread. On the CPU
//! there is no boundary to cross, but the same code runs on CUDA, so the counts say what a GPU
//! run of it would do: `pipeline bench-train` prints them per step, and the tests hold the
//! training step to one read and the batch's upload. The code a training step runs calls
//! candle's reads and uploads nowhere else (a test in this module checks the files).
use candle_core::{Device, Shape, Tensor, WithDType};
use std::cell::Cell;

/// Reads and uploads so far on this thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Reads of tensor values into host memory.
    pub host_syncs: u64,
    /// Bytes uploaded from host memory onto a device.
    pub bytes_to_device: u64,
}

impl Traffic {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: Traffic) -> Traffic {
        Traffic {
            host_syncs: self.host_syncs - earlier.host_syncs,
            bytes_to_device: self.bytes_to_device - earlier.bytes_to_device,
        }
    }
}

thread_local! {
    static TRAFFIC: Cell<Traffic> = const { Cell::new(Traffic { host_syncs: 0, bytes_to_device: 0 }) };
}

/// This thread's counts.
pub fn traffic() -> Traffic {
    TRAFFIC.with(Cell::get)
}

fn count(syncs: u64, bytes: u64) {
    TRAFFIC.with(|t| {
        let mut now = t.get();
        now.host_syncs += syncs;
        now.bytes_to_device += bytes;
        t.set(now);
    });
}

/// The values of a one-dimensional tensor, read into host memory.
pub fn read_vec1<T: WithDType>(tensor: &Tensor) -> candle_core::Result<Vec<T>> {
    count(1, 0);
    tensor.to_vec1()
}

/// The rows of a two-dimensional tensor, read into host memory.
pub fn read_vec2<T: WithDType>(tensor: &Tensor) -> candle_core::Result<Vec<Vec<T>>> {
    count(1, 0);
    tensor.to_vec2()
}

/// The value of a tensor of one element, read into host memory.
pub fn read_scalar<T: WithDType>(tensor: &Tensor) -> candle_core::Result<T> {
    count(1, 0);
    tensor.to_scalar()
}

/// `values` as a tensor of `shape` on `device`.
pub fn upload<T: WithDType, S: Into<Shape>>(
    values: Vec<T>,
    shape: S,
    device: &Device,
) -> candle_core::Result<Tensor> {
    count(0, (values.len() * std::mem::size_of::<T>()) as u64);
    Tensor::from_vec(values, shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_uploads_are_counted_on_this_thread() {
        let before = traffic();
        let t = upload(vec![1f32, 2.0, 3.0], 3, &Device::Cpu).unwrap();
        assert_eq!(read_vec1::<f32>(&t).unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(read_scalar::<f32>(&t.sum_all().unwrap()).unwrap(), 6.0);
        assert_eq!(traffic().since(before), Traffic { host_syncs: 2, bytes_to_device: 12 });
        let other = std::thread::spawn(traffic).join().unwrap();
        assert_eq!(other, Traffic::default(), "another thread counts its own");
    }

    /// The files of the training step's code, which must cross the boundary through this
    /// module only (outside their tests).
    const STEP_FILES: [&str; 14] = [
        "src/training/fit.rs",
        "src/training/losses.rs",
        "src/training/optim.rs",
        "src/training/outliers.rs",
        "src/models/layers.rs",
        "src/models/densenet.rs",
        "src/models/wide_resnet.rs",
        "src/models/small_cnn.rs",
        "src/models/resnet.rs",
        "src/kinds/train.rs",
        "src/kinds/um.rs",
        "src/kinds/umap.rs",
        "src/kinds/poem.rs",
        "src/kinds/oe.rs",
    ];

    #[test]
    fn the_training_step_reads_and_uploads_only_through_this_module() {
        let direct = [
            ".to_vec0",
            ".to_vec1",
            ".to_vec2",
            ".to_vec3",
            ".to_scalar",
            "Tensor::from_vec",
            "Tensor::new(",
            "Tensor::from_slice",
        ];
        let mut found = Vec::new();
        for file in STEP_FILES {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for (n, line) in code.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for call in direct.iter().filter(|call| line.contains(*call)) {
                    found.push(format!("{file}:{}: {call}", n + 1));
                }
            }
        }
        assert!(found.is_empty(), "reads or uploads that bypass stages::transfer:\n{}", found.join("\n"));
    }
}
