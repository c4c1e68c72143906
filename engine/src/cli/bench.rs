//! `pipeline bench-train`: times training steps of a benchmark network and prints one JSON line
//! with the step times and the process's memory, for bench/train_vs_pytorch.py.
use super::exit::Status;
use super::shell::Shell;
use anyhow::{anyhow, Context};
use stages::device;
use stages::device::DeviceChoice;

/// A line of /proc/self/status in bytes (`VmRSS`, `VmHWM`), where the system has one.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident size (VmHWM) to the current one (Linux: `5` to clear_refs).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What `pipeline bench-train` times: the net, training or evaluation steps, the batch size,
/// the steps before and under the clock, the seed and the device (`auto`, `cpu`, `cuda:N`).
pub struct TrainBench {
    pub net: String,
    pub eval: bool,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub seed: u64,
    pub device: String,
}

pub fn bench_train(bench: &TrainBench, shell: &Shell) -> anyhow::Result<Status> {
    let TrainBench { net, eval, batch, warmup, steps, seed, device: device_text } = bench;
    let (net, eval, batch, warmup, steps, seed) = (net.as_str(), *eval, *batch, *warmup, *steps, *seed);
    let spec = stages::estimate::throughput::bench_spec(net).ok_or_else(|| {
        anyhow!(
            "unknown benchmark net `{net}` (known: {})",
            stages::estimate::throughput::BENCH_NETS.join(", ")
        )
    })?;
    let choice = DeviceChoice::parse(device_text)
        .ok_or_else(|| anyhow!("unknown device `{device_text}` (auto, cpu, cuda or cuda:N)"))?;
    let (device, notice) = device::select(choice).map_err(crate::error::EngineError::Device)?;
    if let Some(notice) = notice {
        shell.warn(&notice);
    }
    let mut rss_before = None;
    let mut peak_reset = false;
    let before_timed = || {
        rss_before = proc_status_bytes("VmRSS");
        peak_reset = reset_peak_rss();
    };
    let time = if eval {
        stages::estimate::throughput::time_evaluation_batches
    } else {
        stages::estimate::throughput::time_training_steps
    };
    // On a thread of the pool, as `run` computes a stage when it runs one at a time.
    let times = rayon::scope(|_| time(&spec, batch, warmup, steps, seed, &device, before_timed))
        .with_context(|| format!("benchmarking {net}"))?;
    let peak = proc_status_bytes("VmHWM");
    let line = serde_json::json!({
        "framework": "pipeline",
        "net": net,
        "mode": if eval { "eval" } else { "training" },
        "batch": batch,
        "threads": rayon::current_num_threads(),
        "device": device::describe(&device),
        "learnable_weights": spec.learnable_count()?,
        "step_seconds": times,
        // Peak resident size while the timed steps ran (null where it cannot be read), and
        // the resident size just before them.
        "peak_rss_bytes": if peak_reset { peak } else { None },
        "rss_before_bytes": rss_before,
    });
    shell.emit(line);
    Ok(Status::Success)
}

/// `pipeline bench-knn`: seconds for KNN's exact k-th-neighbour search of `queries` random unit
/// vectors against a bank of `bank` (seeded, reproducible).
pub fn bench_knn(bank: usize, queries: usize, width: usize, shell: &Shell) -> anyhow::Result<Status> {
    use stages::scores::feature_bank::unit;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut rows = |n: usize| -> Vec<Vec<f32>> {
        (0..n).map(|_| unit(&(0..width).map(|_| next()).collect::<Vec<f32>>())).collect()
    };
    let (bank_rows, query_rows) = (rows(bank), rows(queries));
    let started = std::time::Instant::now();
    let scores = stages::scores::knn::knn_scores(&query_rows, &bank_rows, stages::scores::knn::K)?;
    let seconds = started.elapsed().as_secs_f64();
    shell.emit(serde_json::json!({
        "bank": bank, "queries": queries, "width": width, "k": stages::scores::knn::K,
        "threads": rayon::current_num_threads(), "seconds": seconds,
        "queries_per_second": queries as f64 / seconds, "scored": scores.len(),
    }));
    Ok(Status::Success)
}
