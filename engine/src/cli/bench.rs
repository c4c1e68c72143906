//! `pipeline bench-train`: times training steps of a benchmark network and prints one JSON line
//! with the step times and the process's memory, for bench/train_vs_pytorch.py.
use super::args::BenchTrainArgs;
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

/// The mean of `values` (0 for none).
fn mean(values: impl Iterator<Item = u64>) -> f64 {
    let (sum, count) = values.fold((0u64, 0u64), |(s, c), v| (s + v, c + 1));
    sum as f64 / count.max(1) as f64
}

pub fn bench_train(bench: &BenchTrainArgs, shell: &Shell) -> anyhow::Result<Status> {
    use stages::estimate::throughput::{self as throughput, BenchStage, StepBench};
    let BenchTrainArgs {
        net,
        eval,
        stage,
        dropout,
        crop_padding,
        batch,
        warmup,
        steps,
        seed,
        device: device_text,
    } = bench;
    let (net, eval, batch, warmup, steps, seed) = (net.as_str(), *eval, *batch, *warmup, *steps, *seed);
    let base = throughput::bench_spec(net).ok_or_else(|| {
        anyhow!("unknown benchmark net `{net}` (known: {})", throughput::BENCH_NETS.join(", "))
    })?;
    if !(0.0..1.0).contains(dropout) {
        return Err(anyhow!("--dropout {dropout}: must be in [0, 1)"));
    }
    let spec = stages::models::ModelSpec { dropout: *dropout, ..base };
    let stage = match stage.as_deref() {
        None => BenchStage::Train,
        Some(name) => BenchStage::parse(name).ok_or_else(|| {
            let known: Vec<&str> = BenchStage::ALL.iter().map(|s| s.name()).collect();
            anyhow!("unknown --stage `{name}` (known: {})", known.join(", "))
        })?,
    };
    let crop_padding = crop_padding.unwrap_or(if spec.input_shape[1..] == [32, 32] { 4 } else { 0 });
    let device = open_device(device_text, shell)?;
    let mut rss_before = None;
    let mut peak_reset = false;
    let before_timed = || {
        rss_before = proc_status_bytes("VmRSS");
        peak_reset = reset_peak_rss();
    };
    // On a thread of the pool, as `run` computes a stage when it runs one at a time.
    let (times, traffic) = if eval {
        let times = rayon::scope(|_| {
            throughput::time_evaluation_batches(&spec, batch, warmup, steps, seed, &device, before_timed)
        });
        (times.with_context(|| format!("benchmarking {net}"))?, None)
    } else {
        let bench = StepBench { stage, batch, warmup, steps, seed, crop_padding };
        let times = rayon::scope(|_| throughput::time_training_steps(&spec, &bench, &device, before_timed))
            .with_context(|| format!("benchmarking {net}"))?;
        (times.seconds, Some(times.traffic))
    };
    let peak = proc_status_bytes("VmHWM");
    let [c, h, w] = spec.input_shape;
    let mut line = serde_json::json!({
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
    if let Some(traffic) = traffic {
        let extra = serde_json::json!({
            "stage": stage.name(),
            "dropout": dropout,
            "crop_padding": crop_padding,
            // Reads of device values into host memory and bytes uploaded, per timed step (the
            // batch itself is batch_bytes).
            "host_syncs_per_step": mean(traffic.iter().map(|t| t.host_syncs)),
            "bytes_to_device_per_step": mean(traffic.iter().map(|t| t.bytes_to_device)),
            "batch_bytes": batch * (c * h * w * 4 + 4),
        });
        if let (Some(line), serde_json::Value::Object(extra)) = (line.as_object_mut(), extra) {
            line.extend(extra);
        }
    }
    shell.emit(line);
    Ok(Status::Success)
}

/// The device `text` names (`auto`, `cpu`, `cuda`, `cuda:N`), saying when "auto" fell back.
fn open_device(text: &str, shell: &Shell) -> anyhow::Result<device::Device> {
    let choice = DeviceChoice::parse(text)
        .ok_or_else(|| anyhow!("unknown device `{text}` (auto, cpu, cuda or cuda:N)"))?;
    let (device, notice) = device::select(choice).map_err(crate::error::EngineError::Device)?;
    if let Some(notice) = notice {
        shell.warn(&notice);
    }
    Ok(device)
}

/// `pipeline check-ops`: every op on the CPU against `device_text`, a JSON line each.
pub fn check_ops(device_text: &str, shell: &Shell) -> anyhow::Result<Status> {
    let device = open_device(device_text, shell)?;
    let results = rayon::scope(|_| stages::ops_check::check_ops(&device)).context("comparing ops")?;
    let failed = results.iter().filter(|r| !r.passed).count();
    for result in &results {
        let mut line = serde_json::to_value(result)?;
        if let Some(fields) = line.as_object_mut() {
            fields.insert("device".into(), device::describe(&device).into());
            let cudnn = device.is_cuda().then(stages::models::kernels::cudnn_conv::cudnn_version).flatten();
            fields.insert("cudnn".into(), cudnn.into());
        }
        shell.emit(line);
    }
    if failed > 0 {
        shell.warn(&format!("{failed} of {} ops differ beyond their tolerance", results.len()));
        return Ok(Status::Failure);
    }
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
