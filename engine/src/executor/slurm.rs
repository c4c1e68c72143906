//! The Slurm executor: an instance that is not cached becomes one `sbatch` job running this
//! binary's `worker` mode on that instance alone, which commits into the shared cache. One
//! `squeue` per interval serves every waiting instance (no `sacct`, which is often disabled);
//! the committed entry, not the job's state, is the proof of success.
//!
//! Jobs are named after the cache and the instance's key (`pipeline-<16 hex>`), so a
//! coordinator started again re-attaches to the jobs still queued or running instead of
//! submitting them twice, and two caches never share a job.
use super::job::{Executor, ExecutorError, JobEvent, JobSpec, JobState, Polled, Submitted, Ticket};
pub use super::slurm_error::SlurmJobError;
use super::squeue::{self, JobRow, Meaning};
use crate::events::Reporter;
use crate::recipe::resources::{Resources, SlurmSettings};
use crate::recipe::Recipe;
use cache::CacheKey;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How often `squeue` is asked unless `[executor.slurm] poll_seconds` says otherwise.
const DEFAULT_POLL: f64 = 2.0;
/// How many times a job that hit its time limit is submitted again by default.
const DEFAULT_RETRIES: u32 = 3;
/// Lost jobs (preempted, node failure) are resubmitted at most this many times in a row, so a
/// broken partition cannot loop forever.
const MAX_LOST: u32 = 20;
/// Lines of a failed job's log shown with the failure.
const LOG_TAIL: usize = 20;
/// Polls in a row that may fail (`squeue` times out on a busy controller) before the jobs are
/// given up on.
const MAX_POLL_FAILURES: u32 = 30;
/// Slurm's default MaxArraySize is 1001: an array holds at most this many tasks.
const MAX_ARRAY_TASKS: usize = 1000;
/// The first poll after something changed comes this soon; each quiet poll doubles the wait,
/// up to `poll_seconds`: short jobs are seen ending at once, long ones cost few `squeue` calls.
const FIRST_POLL: Duration = Duration::from_millis(250);

/// What `run --executor slurm` needs to submit jobs.
pub struct SlurmExecutor {
    settings: SlurmSettings,
    gpu_recipe: bool,
    binary: PathBuf,
    recipe: PathBuf,
    cache: PathBuf,
    logs: PathBuf,
    poll: Duration,
    next_ticket: AtomicU64,
    /// Every job this coordinator handed to Slurm, by ticket (Ctrl-C cancels them).
    jobs: Mutex<HashMap<Ticket, Track>>,
    /// Polls in a row whose `squeue` failed.
    poll_failures: Mutex<u32>,
    /// Polls in a row that saw nothing change (the next waits longer).
    quiet_polls: AtomicU32,
    /// Jobs handed over since the last poll, submitted together by it: the ready instances
    /// that ask for the same resources become one job array.
    pending: Mutex<Vec<(Ticket, Pending)>>,
    /// Jobs named like ours that were queued or running when this coordinator started.
    attachable: Mutex<BTreeMap<String, String>>,
}

/// One instance's job, across its resubmissions.
#[derive(Clone)]
struct Track {
    key: CacheKey,
    /// Its log; the `sbatch` arguments it is resubmitted with (a forced job's first attempt
    /// starts over, the next ones resume).
    log: PathBuf,
    args: Vec<String>,
    resources: Resources,
    /// The Slurm job now computing it, and that job's row at the last poll.
    id: String,
    last: Option<JobRow>,
    out_of_time: u32,
    lost: u32,
    ended: bool,
}

/// A job handed over and not submitted yet.
struct Pending {
    track: Track,
    /// Its job name, label and planned key inputs' file; whether it is forced; its first
    /// attempt's `sbatch` arguments (when it goes alone).
    name: String,
    label: String,
    expect: PathBuf,
    forced: bool,
    first_args: Vec<String>,
}

/// A forced job's first attempt (it starts over) or a resubmission (it resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    First,
    Resume,
}

/// Why the executor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("cannot run `squeue` ({0}); is this a Slurm login node, and is SLURM_CONF set?")]
    NoSlurm(String),
    #[error("cannot create {path}: {source}")]
    Logs { path: PathBuf, source: std::io::Error },
    #[error("cannot find this program's own path: {0}")]
    Binary(std::io::Error),
}

impl SlurmExecutor {
    /// An executor for `recipe` (read from `recipe_path`) committing into the cache at `cache`,
    /// submitting with `settings` (the recipe's over the project's); asks `squeue` once for the
    /// jobs of an earlier coordinator to re-attach to.
    pub fn new(
        recipe: &Recipe,
        recipe_path: &Path,
        cache: &Path,
        settings: SlurmSettings,
    ) -> Result<SlurmExecutor, SlurmError> {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let cache = canonical_cache(cache);
        let logs = logs_dir(&cache);
        std::fs::create_dir_all(&logs).map_err(|source| SlurmError::Logs { path: logs.clone(), source })?;
        let binary = std::env::current_exe().map_err(SlurmError::Binary)?;
        let executor = SlurmExecutor {
            poll: Duration::from_secs_f64(settings.poll_seconds.unwrap_or(DEFAULT_POLL)),
            settings,
            gpu_recipe: recipe.device != stages::device::DeviceChoice::Cpu,
            binary,
            recipe: absolute(recipe_path),
            cache,
            logs,
            next_ticket: AtomicU64::new(0),
            jobs: Mutex::default(),
            poll_failures: Mutex::new(0),
            quiet_polls: AtomicU32::new(0),
            pending: Mutex::default(),
            attachable: Mutex::new(BTreeMap::new()),
        };
        let rows = query_squeue().map_err(|e| match e {
            SlurmJobError::Squeue(said) => SlurmError::NoSlurm(said),
            other => SlurmError::NoSlurm(other.to_string()),
        })?;
        let active = by_instance_name(&executor.logs, rows)
            .into_iter()
            .filter(|(_, r)| squeue::meaning(&r.state) == Meaning::Waiting)
            .map(|(name, r)| (name, r.id))
            .collect();
        *executor.attachable.lock().unwrap_or_else(|e| e.into_inner()) = active;
        Ok(executor)
    }

    /// What an instance of `stage_kind` asks for: its stage's `resources`, then
    /// `[executor.slurm.kinds.KIND]`, then `[executor.slurm.defaults]`, then the kind's
    /// built-in request.
    pub fn resources(&self, declared: &Resources, stage_kind: &str, role: stages::Role) -> Resources {
        let kind = self.settings.kinds.get(stage_kind).cloned().unwrap_or_default();
        declared.or(&kind).or(&self.settings.defaults).or(&Resources::kind_default(role, self.gpu_recipe))
    }

    /// The `sbatch` arguments for a job named `name` computing `label`, which checks that it
    /// computes the key inputs written at `expect`. `attempt`: whether a forced job starts over
    /// (its first attempt) or resumes (a resubmission after its time limit or a lost node).
    pub fn sbatch_args(
        &self,
        job: &JobSpec,
        name: &str,
        resources: &Resources,
        attempt: Attempt,
    ) -> Vec<String> {
        let label = &job.instance.label;
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            "--open-mode=append".into(),
            // Preempted or failed nodes put the job back in the queue; it resumes.
            "--requeue".into(),
        ];
        let file = log_file_name(label, name);
        let (output, redirect) = output_to(&self.logs, &file, &quote(&file));
        args.extend(output);
        args.extend(resource_args(resources));
        args.extend(self.settings.placement_args());
        args.extend(self.settings.extra.iter().cloned());
        let mut command = vec![
            self.binary.display().to_string(),
            "worker".into(),
            self.recipe.display().to_string(),
            "--instance".into(),
            label.to_string(),
            "--cache".into(),
            self.cache.display().to_string(),
            "--expect".into(),
            self.expect_path(name).display().to_string(),
        ];
        if job.forced {
            command.push("--force".into());
            if attempt == Attempt::Resume {
                command.push("--keep-resume".into());
            }
        }
        args.push(wrap(&command) + &redirect);
        args
    }

    /// The job name of the instance with `key`.
    pub fn job_name(&self, key: &cache::CacheKey) -> String {
        job_name(&self.cache, key)
    }

    /// Where the key inputs a job must compute are written for it.
    fn expect_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.inputs.json"))
    }

    /// Submits every pending job: those that ask for the same resources (and are all forced or
    /// all not) as job arrays of up to 1,000 tasks (`--array=0-N%M`, M from `array_cap`), a
    /// job alone as a plain job. What each ticket's submission said, or why it was refused.
    /// Only the jobs of `polled` go: one handed over while the poll started is submitted by
    /// the next, which reports it.
    fn flush(&self, polled: &[Ticket]) -> HashMap<Ticket, Result<Vec<JobEvent>, SlurmJobError>> {
        let pending: Vec<(Ticket, Pending)> = {
            let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let polled: std::collections::HashSet<&Ticket> = polled.iter().collect();
            let (now, later) = std::mem::take(&mut *all).into_iter().partition(|(t, _)| polled.contains(t));
            *all = later;
            now
        };
        type Group = (Vec<String>, bool);
        let mut groups: BTreeMap<Group, Vec<(Ticket, Pending)>> = BTreeMap::new();
        for (ticket, job) in pending {
            let group = if self.settings.arrays.unwrap_or(true) {
                (resource_args(&job.track.resources), job.forced)
            } else {
                // Each alone: a group of its own.
                (vec![job.name.clone()], job.forced)
            };
            groups.entry(group).or_default().push((ticket, job));
        }
        let mut said = HashMap::new();
        for (_, group) in groups {
            let mut group = group.into_iter().peekable();
            while group.peek().is_some() {
                let chunk: Vec<(Ticket, Pending)> = group.by_ref().take(MAX_ARRAY_TASKS).collect();
                said.extend(self.submit_chunk(chunk));
            }
        }
        said
    }

    /// Submits `chunk` (jobs asking for the same resources): one alone as a plain job, several
    /// as one job array whose task `t` runs the instance on line `t` of its tasks file.
    fn submit_chunk(
        &self,
        chunk: Vec<(Ticket, Pending)>,
    ) -> Vec<(Ticket, Result<Vec<JobEvent>, SlurmJobError>)> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let [(ticket, job)] = chunk.as_slice() {
            let result = sbatch(&job.first_args, &job.track.resources).map(|id| {
                let what = format!("submitted ({})", describe(&job.track.resources));
                jobs.insert(*ticket, Track { id: id.clone(), ..job.track.clone() });
                vec![JobEvent { job: id, what }]
            });
            return vec![(*ticket, result)];
        }
        let mut hasher = blake3::Hasher::new();
        for (_, job) in &chunk {
            hasher.update(job.name.as_bytes());
        }
        let array = format!("{ARRAY_PREFIX}{}", &hasher.finalize().to_hex()[..16]);
        let tasks_file = self.logs.join(format!("{array}.tasks"));
        let lines: Vec<String> = chunk
            .iter()
            .map(|(_, job)| format!("{}\t{}\t{}", job.label, job.expect.display(), job.name))
            .collect();
        let resources = chunk[0].1.track.resources.clone();
        let refused = |e: SlurmJobError| {
            let message = e.to_string();
            chunk.iter().map(|(t, _)| (*t, Err(SlurmJobError::Broken(message.clone())))).collect::<Vec<_>>()
        };
        if let Err(e) = std::fs::write(&tasks_file, lines.join("\n") + "\n") {
            return refused(SlurmJobError::Broken(format!("cannot write {}: {e}", tasks_file.display())));
        }
        let cap = self.settings.array_cap.map(|m| format!("%{m}")).unwrap_or_default();
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={array}"),
            "--open-mode=append".into(),
            "--requeue".into(),
            format!("--array=0-{}{cap}", chunk.len() - 1),
        ];
        let (output, redirect) = output_to(
            &self.logs,
            &format!("{array}_%a.log"),
            &format!("\"{array}_$SLURM_ARRAY_TASK_ID.log\""),
        );
        args.extend(output);
        args.extend(resource_args(&resources));
        args.extend(self.settings.placement_args());
        args.extend(self.settings.extra.iter().cloned());
        let mut command = vec![
            self.binary.display().to_string(),
            "worker".into(),
            self.recipe.display().to_string(),
            "--cache".into(),
            self.cache.display().to_string(),
            "--tasks".into(),
            tasks_file.display().to_string(),
        ];
        if chunk[0].1.forced {
            command.push("--force".into());
        }
        // The task's index is the job's own: expanded by its shell, not quoted away.
        args.push(format!("{} --task \"$SLURM_ARRAY_TASK_ID\"{redirect}", wrap(&command)));
        let id = match sbatch(&args, &resources) {
            Ok(id) => id,
            Err(e) => return refused(e),
        };
        let n = chunk.len();
        chunk
            .into_iter()
            .enumerate()
            .map(|(t, (ticket, job))| {
                // The instance's log, under its own name, is the task's.
                let _ = std::fs::remove_file(&job.track.log);
                let _ = std::os::unix::fs::symlink(format!("{array}_{t}.log"), &job.track.log);
                let task = format!("{id}_{t}");
                let what =
                    format!("submitted ({}) as task {t} of {n} of job array {id}", describe(&resources));
                jobs.insert(ticket, Track { id: task.clone(), ..job.track });
                (ticket, Ok(vec![JobEvent { job: task, what }]))
            })
            .collect()
    }

    /// Cancels every job this coordinator submitted that has not ended (Ctrl-C); returns
    /// their ids.
    pub fn cancel_submitted(&self) -> Vec<String> {
        let tickets: Vec<Ticket> =
            self.jobs.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        self.cancel(&tickets)
    }

    /// Where `track`'s job stands in `rows` (one `squeue` answer); resubmits a job that hit
    /// its time limit or was lost, and says what changed.
    fn advance(
        &self,
        track: &mut Track,
        rows: &HashMap<&str, &JobRow>,
        committed: &dyn Fn(&CacheKey) -> bool,
    ) -> Polled {
        let active = |events| Polled { state: JobState::Active, events };
        let failed = |e: SlurmJobError| Polled { state: JobState::Failed(e.into()), events: Vec::new() };
        let Some(&row) = rows.get(track.id.as_str()) else {
            // Gone from the queue: finished longer ago than Slurm keeps jobs.
            return Polled { state: JobState::Ended, events: Vec::new() };
        };
        let same = track
            .last
            .as_ref()
            .is_some_and(|b| row.state == b.state && row.node == b.node && row.reason == b.reason);
        if same {
            return active(Vec::new());
        }
        let id = track.id.clone();
        let again = match squeue::meaning(&row.state) {
            Meaning::Waiting if row.state == "PENDING" && squeue::never_starts(&row.reason) => {
                let _ = Command::new("scancel").arg(&id).status();
                return failed(SlurmJobError::NeverStarts {
                    id,
                    reason: row.reason.clone(),
                    asked: describe(&track.resources),
                });
            }
            Meaning::Waiting => {
                let what = match row.state.as_str() {
                    "RUNNING" => format!("running on {}", row.node),
                    "PENDING" => pending(&row.reason),
                    other => other.to_lowercase(),
                };
                track.last = Some(row.clone());
                return active(vec![JobEvent { job: id, what }]);
            }
            Meaning::Ended => return Polled { state: JobState::Ended, events: Vec::new() },
            Meaning::Lost | Meaning::OutOfTime if committed(&track.key) => {
                return Polled { state: JobState::Ended, events: Vec::new() }
            }
            Meaning::Lost => {
                track.lost += 1;
                if track.lost > MAX_LOST {
                    return failed(SlurmJobError::Lost { id, times: track.lost, state: row.state.clone() });
                }
                format!("{} (not counted as an attempt)", row.state.to_lowercase())
            }
            Meaning::OutOfTime => {
                track.out_of_time += 1;
                let retries = self.settings.retries.unwrap_or(DEFAULT_RETRIES);
                if track.out_of_time > retries {
                    return failed(SlurmJobError::OutOfTime {
                        id,
                        limit: track.resources.time.clone().unwrap_or_else(|| "?".into()),
                        times: track.out_of_time,
                        retries,
                        log: log_tail(&track.log),
                    });
                }
                format!("hit its time limit (attempt {} of {retries} more)", track.out_of_time)
            }
            Meaning::Failed(why) => {
                return failed(SlurmJobError::Failed { id, why, log: log_tail(&track.log) })
            }
        };
        match sbatch(&track.args, &track.resources) {
            Ok(new_id) => {
                track.id = new_id.clone();
                track.last = None;
                active(vec![JobEvent {
                    job: new_id,
                    what: format!("resubmitted: job {id} {again}; it resumes"),
                }])
            }
            Err(e) => failed(e),
        }
    }
}

const JOB_PREFIX: &str = "pipeline-";
/// Job arrays are named `pipeline-array-<16 hex>`; their tasks file lists each task's instance.
const ARRAY_PREFIX: &str = "pipeline-array-";

/// Slurm's rows keyed by the job name of the instance each computes: a plain job's own name,
/// and for each task of one of our arrays, the name on its line of the array's tasks file.
fn by_instance_name(logs: &Path, rows: Vec<JobRow>) -> BTreeMap<String, JobRow> {
    let mut named: BTreeMap<String, JobRow> = BTreeMap::new();
    let mut tasks: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        let name = if row.name.starts_with(ARRAY_PREFIX) {
            let names = tasks.entry(row.name.clone()).or_insert_with(|| {
                std::fs::read_to_string(logs.join(format!("{}.tasks", row.name)))
                    .map(|text| {
                        text.lines().filter_map(|l| l.rsplit('\t').next()).map(str::to_string).collect()
                    })
                    .unwrap_or_default()
            });
            let task = row.id.rsplit_once('_').and_then(|(_, t)| t.parse::<usize>().ok());
            match task.and_then(|t| names.get(t)) {
                Some(name) => name.clone(),
                None => continue,
            }
        } else if row.name.starts_with(JOB_PREFIX) {
            row.name.clone()
        } else {
            continue;
        };
        let newer = named.get(&name).is_none_or(|old| job_number(&old.id) < job_number(&row.id));
        if newer {
            named.insert(name, row);
        }
    }
    named
}

/// A job id's number, for ordering (`123` and `123_4` both give 123).
fn job_number(id: &str) -> u64 {
    id.split('_').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The job name of the instance with `key` computed into the cache at `cache` (an absolute
/// path): the same for every coordinator on this cache, different for another cache.
pub fn job_name(cache: &Path, key: &cache::CacheKey) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(cache.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(key.as_str().as_bytes());
    format!("{JOB_PREFIX}{}", &hasher.finalize().to_hex()[..16])
}

/// The name of the coordinator job (`run --detach`) of the recipe at `recipe` computing into
/// the cache at `cache` (both canonical paths): one per (cache, recipe), whatever the recipe's
/// name holds (`/` and `|` would break `--output` or `squeue`'s output).
pub fn coordinator_name(cache: &Path, recipe: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(cache.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(recipe.as_os_str().as_encoded_bytes());
    format!("{JOB_PREFIX}coordinator-{}", &hasher.finalize().to_hex()[..16])
}

/// Where a job's output goes: the `sbatch` options, and what to append to its `--wrap` command.
/// Slurm expands `%` in `--output` and `--chdir` and drops `\`, so a log folder whose path has
/// either is written by the job's shell instead (`>> 'FOLDER'/NAME`); Slurm's own notices (a time
/// limit reached) then go nowhere. `slurm_name` may use Slurm's `%j`/`%a`, `shell_name` (already
/// quoted for the shell) `$SLURM_JOB_ID`/`$SLURM_ARRAY_TASK_ID`.
pub fn output_to(logs: &Path, slurm_name: &str, shell_name: &str) -> (Vec<String>, String) {
    let text = logs.to_string_lossy();
    if !text.contains('%') && !text.contains('\\') {
        // The folder is the job's working folder: the log's own name has neither character.
        (vec![format!("--chdir={text}"), format!("--output={slurm_name}")], String::new())
    } else {
        (vec!["--output=/dev/null".to_string()], format!(" >> {}/{shell_name} 2>&1", quote(&text)))
    }
}

/// `--cpus-per-task`, `--mem`, `--time` and `--gres` for what `resources` sets.
pub fn resource_args(resources: &Resources) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(cpus) = resources.cpus {
        args.push(format!("--cpus-per-task={cpus}"));
    }
    if let Some(mem) = &resources.mem {
        args.push(format!("--mem={mem}"));
    }
    if let Some(time) = &resources.time {
        args.push(format!("--time={time}"));
    }
    if let Some(gpus) = resources.gpus.filter(|&g| g > 0) {
        args.push(format!("--gres=gpu:{gpus}"));
    }
    args
}

/// Deletes the job logs and planned key inputs of the entries `keys` of the cache at `cache`
/// (canonical) that `gc` deleted; returns how many files went.
pub fn remove_logs(cache: &Path, keys: &[CacheKey]) -> usize {
    let names: std::collections::HashSet<String> = keys.iter().map(|k| job_name(cache, k)).collect();
    let Ok(listing) = std::fs::read_dir(logs_dir(cache)) else { return 0 };
    let mut removed = 0;
    for entry in listing.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        // `LABEL.NAME.log` and `NAME.inputs.json`.
        let name = file
            .strip_suffix(".inputs.json")
            .or_else(|| file.strip_suffix(".log").and_then(|rest| rest.rsplit('.').next()));
        if name.is_some_and(|n| names.contains(n)) {
            // An array task's log is a link to the task's file: both go.
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let _ = std::fs::remove_file(logs_dir(cache).join(target));
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// "pending", with Slurm's reason when it gives one.
pub fn pending(reason: &str) -> String {
    match reason {
        "" | "None" | "(null)" => "pending".to_string(),
        reason => format!("pending ({reason})"),
    }
}

/// The cache's path as every coordinator and job names it: symbolic links resolved, so two
/// spellings of one cache give the same job names.
pub fn canonical_cache(cache: &Path) -> PathBuf {
    std::fs::canonicalize(cache)
        .or_else(|_| std::path::absolute(cache))
        .unwrap_or_else(|_| cache.to_path_buf())
}

/// Where the jobs' logs of the cache at `cache` are.
pub fn logs_dir(cache: &Path) -> PathBuf {
    cache.join("logs").join("slurm")
}

/// The log of the job named `name` computing the instance labelled `label`: the label first,
/// for people, with the characters a file name or Slurm would trip on replaced.
pub fn log_file_name(label: &str, name: &str) -> String {
    let safe: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "@=,.-_[]".contains(c) { c } else { '_' })
        .collect();
    format!("{safe}.{name}.log")
}

/// This user's jobs that Slurm still shows, by the job name of the instance each computes
/// (array tasks included) and coordinators by theirs, the newest of each name; `None` where
/// there is no Slurm to ask: for `pipeline status` and `cancel` of the cache at `cache`.
pub fn jobs_by_name(cache: &Path) -> Option<BTreeMap<String, JobRow>> {
    if std::env::var_os("SLURM_CONF").is_none() && !Path::new("/etc/slurm/slurm.conf").exists() {
        return None;
    }
    let rows = query_squeue().ok()?;
    Some(by_instance_name(&logs_dir(cache), rows))
}

/// A job's row as status shows it: "job 12 running on node7".
pub fn describe_row(row: &JobRow) -> String {
    match row.state.as_str() {
        "RUNNING" => format!("job {} running on {}", row.id, row.node),
        "PENDING" => format!("job {} {}", row.id, pending(&row.reason)),
        other => format!("job {} {}", row.id, other.to_lowercase()),
    }
}

/// Every job of this user that Slurm still shows, finished ones included.
fn query_squeue() -> Result<Vec<JobRow>, SlurmJobError> {
    let output = Command::new("squeue")
        .args(["--me", "--states=all", "--array", "-h", "-o", squeue::FORMAT])
        .output()
        .map_err(|e| SlurmJobError::Squeue(e.to_string()))?;
    if !output.status.success() {
        return Err(SlurmJobError::Squeue(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    Ok(squeue::parse(&String::from_utf8_lossy(&output.stdout)))
}

/// Runs `sbatch --parsable …` for a job asking for `resources`; the job id it printed.
pub fn sbatch(args: &[String], resources: &Resources) -> Result<String, SlurmJobError> {
    let output = Command::new("sbatch")
        .args(args)
        .output()
        .map_err(|e| SlurmJobError::Broken(format!("cannot run sbatch: {e}")))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let said: Vec<&str> = said.lines().map(|l| l.trim_start_matches("sbatch: error: ")).collect();
        return Err(SlurmJobError::Refused { asked: describe(resources), said: said.join("; ") });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let id = text.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(SlurmJobError::Broken(format!("sbatch printed no job id: {text:?}")));
    }
    Ok(id)
}

/// `--wrap=exec WORD…`, each word quoted for the job's shell.
pub fn wrap(command: &[String]) -> String {
    let quoted: Vec<String> = command.iter().map(|word| quote(word)).collect();
    format!("--wrap=exec {}", quoted.join(" "))
}

/// A word for the job's shell command line.
fn quote(word: &str) -> String {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", word.replace('\'', "'\\''")))
}

/// The last lines of a job's log, indented, or a note that there is none.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            format!(
                "last {} line(s) of {}:\n{}",
                tail.len(),
                path.display(),
                tail.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
            )
        }
        Err(e) => format!("no log at {} ({e})", path.display()),
    }
}

impl Executor for SlurmExecutor {
    /// Writes the key inputs the job must compute, then re-attaches to a job of an earlier
    /// coordinator, or keeps the job for the next poll, which submits what is pending at once.
    fn submit(&self, mut job: JobSpec, _reporter: &dyn Reporter) -> Result<Submitted, ExecutorError> {
        // The job takes the key's lock itself (on its node); this process holds none meanwhile.
        drop(job.lock.take());
        let name = self.job_name(job.key);
        let resources = self.resources(job.resources, job.kind, job.role);
        let expect = self.expect_path(&name);
        let written = serde_json::to_vec_pretty(job.inputs)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&expect, bytes));
        written.map_err(|e| SlurmJobError::Broken(format!("cannot write {}: {e}", expect.display())))?;
        self.quiet_polls.store(0, Ordering::Relaxed);
        let ticket = Ticket(self.next_ticket.fetch_add(1, Ordering::Relaxed));
        let track = Track {
            key: job.key.clone(),
            log: self.logs.join(log_file_name(&job.instance.label, &name)),
            args: self.sbatch_args(&job, &name, &resources, Attempt::Resume),
            resources,
            id: String::new(),
            last: None,
            out_of_time: 0,
            lost: 0,
            ended: false,
        };
        let attached = self.attachable.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
        if let Some(id) = attached {
            let what = "re-attached (submitted by an earlier coordinator)".to_string();
            self.jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ticket, Track { id: id.clone(), ..track });
            return Ok(Submitted { ticket, events: vec![JobEvent { job: id, what }] });
        }
        let pending = Pending {
            first_args: self.sbatch_args(&job, &name, &track.resources, Attempt::First),
            track,
            name,
            label: job.instance.label.clone(),
            expect,
            forced: job.forced,
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push((ticket, pending));
        Ok(Submitted { ticket, events: Vec::new() })
    }

    fn attachable(&self, key: &CacheKey) -> bool {
        self.attachable.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&self.job_name(key))
    }

    /// One `squeue` for every job. The scheduler polls only after `submit` returned, so a job
    /// missing from the answer has left the queue (it is never one `sbatch` has not yet told
    /// the controller about).
    fn poll(&self, tickets: &[Ticket], committed: &dyn Fn(&CacheKey) -> bool) -> Vec<Polled> {
        let mut submitted = self.flush(tickets);
        let answer = query_squeue();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let rows = match answer {
            Ok(rows) => {
                *self.poll_failures.lock().unwrap_or_else(|e| e.into_inner()) = 0;
                rows
            }
            Err(e) => {
                let mut failures = self.poll_failures.lock().unwrap_or_else(|e| e.into_inner());
                *failures += 1;
                return tickets
                    .iter()
                    .map(|_| Polled {
                        state: if *failures > MAX_POLL_FAILURES {
                            JobState::Failed(SlurmJobError::Squeue(e.to_string()).into())
                        } else {
                            JobState::Active
                        },
                        events: Vec::new(),
                    })
                    .collect();
            }
        };
        let by_id: HashMap<&str, &JobRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        let polled: Vec<Polled> = tickets
            .iter()
            .map(|ticket| {
                let (refused, mut events) = match submitted.remove(ticket) {
                    Some(Err(e)) => (Some(e), Vec::new()),
                    Some(Ok(events)) => (None, events),
                    None => (None, Vec::new()),
                };
                if let Some(e) = refused {
                    return Polled { state: JobState::Failed(e.into()), events };
                }
                match jobs.get_mut(ticket) {
                    Some(track) => {
                        let mut polled = self.advance(track, &by_id, committed);
                        track.ended = !matches!(polled.state, JobState::Active);
                        events.append(&mut polled.events);
                        Polled { state: polled.state, events }
                    }
                    None => Polled { state: JobState::Failed(ExecutorError::UnknownTicket(*ticket)), events },
                }
            })
            .collect();
        let changed = polled.iter().any(|p| !p.events.is_empty() || !matches!(p.state, JobState::Active));
        if changed {
            self.quiet_polls.store(0, Ordering::Relaxed);
        } else {
            self.quiet_polls.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn cancel(&self, tickets: &[Ticket]) -> Vec<String> {
        let ids: Vec<String> = {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            tickets.iter().filter_map(|t| jobs.get(t)).filter(|t| !t.ended).map(|t| t.id.clone()).collect()
        };
        if !ids.is_empty() {
            let _ = Command::new("scancel").args(&ids).status();
        }
        ids
    }

    fn poll_interval(&self) -> Duration {
        let quiet = self.quiet_polls.load(Ordering::Relaxed).min(16);
        FIRST_POLL.saturating_mul(1 << quiet).min(self.poll)
    }

    fn log_of(&self, ticket: Ticket) -> Option<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.get(&ticket).map(|track| log_tail(&track.log))
    }
}

fn describe(resources: &Resources) -> String {
    let mut parts = Vec::new();
    if let Some(g) = resources.gpus.filter(|&g| g > 0) {
        parts.push(format!("{g} GPU"));
    }
    if let Some(c) = resources.cpus {
        parts.push(format!("{c} CPU"));
    }
    if let Some(m) = &resources.mem {
        parts.push(m.clone());
    }
    if let Some(t) = &resources.time {
        parts.push(format!("time {t}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_with_shell_characters_are_quoted() {
        assert_eq!(quote("zeta[delta=0.95]@1"), "'zeta[delta=0.95]@1'");
        assert_eq!(quote("/srv/cache"), "/srv/cache");
        assert_eq!(quote("it's"), "\"it's\"");
    }
}
