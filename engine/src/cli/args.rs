//! What the user typed: clap's view of the command line, kept apart from what is built from it.
use super::shell::ColorChoice;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Runs out-of-distribution detection experiments declared in TOML recipes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print only warnings and errors on stderr
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Colour on stderr
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true, value_name = "WHEN")]
    pub color: ColorChoice,
}

/// Where `run` computes stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorChoice {
    Local,
    Slurm,
}

/// What `pipeline bench-train` times: the net, training or evaluation steps, the training
/// stage, dropout and crop padding, the batch size, the steps before and under the clock, the
/// seed and the device.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// small-cnn, resnet-20, densenet-bc-40, densenet-bc-100, wrn-40-4 or resnet-18
    #[arg(long)]
    pub net: String,
    /// Time evaluation-mode forward passes (scoring) instead of training steps
    #[arg(long)]
    pub eval: bool,
    /// The training stage whose step is timed: train (the default) or umap
    #[arg(long)]
    pub stage: Option<String>,
    /// Dropout probability (default: the `train` stage's, 0.3)
    #[arg(long, default_value_t = 0.3)]
    pub dropout: f64,
    /// Random-crop padding (default: 4 for 32×32 inputs, as the CIFAR recipes; 0 otherwise)
    #[arg(long)]
    pub crop_padding: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Untimed steps first
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct VerifyArg {
    /// Re-hash every cached file (by default: presence, type and size are checked)
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Cache folder [default: $PIPELINE_CACHE, else .pipeline-cache in the current folder]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RemoteArg {
    /// The remote: s3://BUCKET/PREFIX, file:///PATH or a folder [default: $PIPELINE_REMOTE, else
    /// the recipe's [remote] url, else pipeline.toml's]
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
}

#[derive(Debug, Args)]
pub struct TimeoutArgs {
    /// A request to the remote that gets no answer fails after this long, retries included
    /// [default: $PIPELINE_REMOTE_TIMEOUT, else 30]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Connecting to the remote fails after this long [default: $PIPELINE_REMOTE_CONNECT_TIMEOUT,
    /// else 5]
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a recipe's stages, reusing cached results
    Run {
        recipe: PathBuf,
        /// Run only this stage and what it needs (repeatable)
        #[arg(long, value_name = "STAGE")]
        only: Vec<String>,
        /// Recompute this stage even if cached (repeatable)
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Stages to run at once
        #[arg(long, short = 'j', default_value_t = 1, value_name = "N")]
        jobs: usize,
        /// Print one JSON object per event on stdout (for CI logs)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
        /// Pull what the remote has instead of computing it, push what is computed
        /// (s3://BUCKET/PREFIX, file:///PATH or a folder; `default`: the configured one)
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        /// With --remote: pull, never push (CI)
        #[arg(long, requires = "remote")]
        remote_read_only: bool,
        /// Where stages are computed: on this machine's threads, or each instance as one Slurm
        /// job committing into the shared cache (see [executor.slurm] in the recipe)
        #[arg(long, value_enum, default_value_t = ExecutorChoice::Local, value_name = "EXECUTOR")]
        executor: ExecutorChoice,
        /// With --executor slurm: submit the coordinator itself as a small job and return, so
        /// that it survives logout (`pipeline status` shows where it stands)
        #[arg(long)]
        detach: bool,
        /// Fail when the recipe or its data no longer match the recipe's lock file (for CI)
        #[arg(long)]
        locked: bool,
    },
    /// Write the recipe's lock file (RECIPE.lock): its datasets' fingerprints, the digests of
    /// the files its stages name (imported checkpoints) and each instance's cache key, to
    /// commit with it
    Lock {
        recipe: PathBuf,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Compute one instance whose upstream entries are cached (what a Slurm job runs)
    Worker {
        recipe: PathBuf,
        /// The instance, as `run` labels it (`zeta[delta=0.95]@1`)
        #[arg(long, value_name = "LABEL", required_unless_present = "tasks")]
        instance: Option<String>,
        /// A job array's tasks file (one `LABEL<TAB>INPUTS-FILE<TAB>JOB-NAME` line per task):
        /// compute the instance on line --task
        #[arg(long, value_name = "FILE", requires = "task", conflicts_with_all = ["instance", "expect"])]
        tasks: Option<PathBuf>,
        /// The array task's index (`$SLURM_ARRAY_TASK_ID`)
        #[arg(long, value_name = "N", requires = "tasks")]
        task: Option<usize>,
        /// Recompute even when cached
        #[arg(long)]
        force: bool,
        /// With --force: continue from what an interrupted attempt of this forced run left
        /// (a resubmitted job), instead of starting over
        #[arg(long, requires = "force")]
        keep_resume: bool,
        /// The key inputs the coordinator planned the job with (JSON): if the recipe or its data
        /// changed since, fail naming what changed instead of computing another instance
        #[arg(long, value_name = "FILE")]
        expect: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Stop a Slurm run: its coordinator (a job, or a process here) and every job of it
    Cancel {
        recipe: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Upload the cache entries a recipe uses that the remote lacks
    Push {
        recipe: PathBuf,
        #[command(flatten)]
        remote: RemoteArg,
        /// Re-hash what the remote holds for the recipe (downloading it) and replace damaged
        /// blobs and manifests
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Download the recipe's entries the local cache lacks from the remote, checking every file
    Pull {
        recipe: PathBuf,
        #[command(flatten)]
        remote: RemoteArg,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Say which stages would run and why, without running anything
    Plan {
        recipe: PathBuf,
        #[arg(long, value_name = "STAGE")]
        only: Vec<String>,
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Measure the throughput of models not measured yet on the recipe's device (a few
        /// steps each), for the duration estimates
        #[arg(long)]
        estimate: bool,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        verify: VerifyArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Say for every stage whether it is cached or will run, and why
    Status {
        recipe: PathBuf,
        /// Fail when the recipe or its data no longer match the recipe's lock file (for CI)
        #[arg(long)]
        locked: bool,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        verify: VerifyArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Print the stage graph
    Dag {
        recipe: PathBuf,
        /// Graphviz output
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Say where a stage's outputs are
    Show {
        recipe: PathBuf,
        stage: String,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        verify: VerifyArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Delete cache entries the given recipes no longer reference
    Gc {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        /// List what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Collect the remote instead of the local cache (s3://BUCKET/PREFIX, file:///PATH or a
        /// folder; `default`: the configured one)
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        /// With --remote: keep blobs no entry lists that are younger than this (a push in
        /// progress may be about to list them)
        #[arg(long, value_name = "SECONDS", default_value_t = 3600, requires = "remote")]
        grace: u64,
        #[command(flatten)]
        timeouts: TimeoutArgs,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        verify: VerifyArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// OOD metrics of score files from any source (.npy, float32 or float64, higher = more ID)
    Metrics {
        /// The ID scores
        id: PathBuf,
        /// One or more OOD score files
        #[arg(required = true)]
        ood: Vec<PathBuf>,
        /// idpos (docs/methods.md §8, the paper's) or openood (OpenOOD v1.5's)
        #[arg(long, value_enum, default_value_t = ConventionArg::Idpos)]
        convention: ConventionArg,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// List a checkpoint's tensors (name, shape, dtype) and the architecture and naming it
    /// matches, if any (.pth, .pt, .safetensors; nothing in the file is executed)
    Inspect {
        file: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Write a computed stage's model as a checkpoint PyTorch loads into the reference network
    Export {
        recipe: PathBuf,
        /// The model stage (`name`, or `name@SEED` when the recipe has several seeds)
        stage: String,
        /// The file to write: .pth (PyTorch's zip format) or .safetensors
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// The key layout: openood, torchvision, um-code, oe-code or pipeline
        #[arg(long, default_value = "pipeline")]
        naming: String,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// List the model architectures with their number of learnable weights
    Models {
        /// Number of classes of the linear head
        #[arg(long, default_value_t = 10)]
        classes: usize,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Print the metric differences between two reports (report.json files or their folders)
    Compare {
        before: PathBuf,
        after: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Validate recipes and the datasets they read (exit status 0 when valid, 1 when not)
    Check {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        /// Check the recipes alone, not the dataset files (headers, shapes) they name
        #[arg(long)]
        no_data: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Time training steps of a benchmark network as a training stage runs them (batch gather
    /// and crop, forward with dropout, backward, SGD, the per-step check) and print one JSON line
    /// with the step times and the host syncs and bytes uploaded per step;
    /// bench/train_vs_pytorch.sh compares it with PyTorch
    BenchTrain(BenchTrainArgs),
    /// Compute every op training and scoring use (convolution geometries and their gradients,
    /// batch norm, dropout and UMAP masks, whole networks, ODIN's input gradient) on the CPU and
    /// on DEVICE from the same inputs; print one JSON line per op with the largest difference
    /// (exit status 1 when one exceeds its tolerance). On the CPU the other side is candle's own
    /// ops, the path CUDA takes
    CheckOps {
        /// auto, cpu, cuda or cuda:N
        #[arg(long, default_value = "cuda")]
        device: String,
    },
    /// Time KNN's exact search (the `knn` score): a bank of random unit features against random
    /// unit queries; prints one JSON line
    BenchKnn {
        /// Training features in the bank
        #[arg(long, default_value_t = 50_000)]
        bank: usize,
        /// Queries scored
        #[arg(long, default_value_t = 10_000)]
        queries: usize,
        /// Feature width (the small CNN's 128, DenseNet-BC-100's 342)
        #[arg(long, default_value_t = 342)]
        width: usize,
    },
    /// Download a public dataset, check its published MD5 and unpack it where the recipes
    /// expect it; without a name, list the datasets
    Fetch {
        /// cifar10, cifar100, svhn, textures, … (omit to list them)
        name: Option<String>,
        /// Data directory [default: $PIPELINE_DATA, else ./data]
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Use this already downloaded archive instead of downloading (still checked)
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
        #[command(flatten)]
        json: JsonArg,
    },
}

/// `--convention` of `pipeline metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConventionArg {
    Idpos,
    Openood,
}
