//! The CUDA build (`scripts/build-cuda.sh`, named by `PIPELINE_CUDA_BINARY`) on a machine
//! without a GPU: it starts although no CUDA library is installed, falls back to the CPU with a
//! notice for `device = "auto"`, refuses `device = "cuda"` clearly, and computes on the CPU the
//! bytes the CPU build computes. Skipped (with a notice) when the variable is unset; CI sets it
//! after building.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cuda_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PIPELINE_CUDA_BINARY").map(PathBuf::from);
    if path.is_none() {
        eprintln!("note: PIPELINE_CUDA_BINARY is not set; the CUDA binary's checks are skipped");
    }
    path
}

#[test]
fn the_cuda_binary_starts_without_a_driver_and_computes_the_cpu_bytes() {
    let Some(binary) = cuda_binary() else { return };
    let has_driver = ["/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1"]
        .iter()
        .any(|p| Path::new(p).exists());
    let models = Command::new(&binary).arg("models").output().expect("the CUDA binary starts");
    assert!(models.status.success(), "{}", stderr(&models));
    assert!(String::from_utf8_lossy(&models.stdout).contains("densenet-bc-100"));

    let dir = tempfile::tempdir().unwrap();
    let text = tiny_recipe(2, "[\"msp\", \"energy\"]");
    let recipe = write_recipe(dir.path(), &text.replace("device = \"cpu\"", "device = \"auto\""));
    let (cpu, cuda) = (dir.path().join("cpu"), dir.path().join("cuda"));
    let (out, _) = run(&recipe, &cpu, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(&binary).arg("run").arg(&recipe).arg("--cache").arg(&cuda).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    if has_driver {
        eprintln!("note: this machine has an NVIDIA driver; the CPU-fallback half is skipped");
        return;
    }
    assert!(stderr(&out).contains("no usable CUDA device (cannot load libcuda"), "{}", stderr(&out));
    assert_eq!(
        outputs_by_key(&cpu),
        outputs_by_key(&cuda),
        "the CUDA build computes the CPU build's bytes on the CPU"
    );

    let strict = write_recipe(dir.path(), &text.replace("device = \"cpu\"", "device = \"cuda\""));
    let out = Command::new(&binary).arg("run").arg(&strict).arg("--cache").arg(&cuda).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot open CUDA device 0: cannot load libcuda"), "{}", stderr(&out));
}
