//! Checkpoints in safetensors, readable by PyTorch.
//!
//! Tensors: every parameter under its PyTorch `state_dict` name and layout (`0.weight` as
//! `[out, in, k, k]`, `4.weight` as `[out, in]`, biases), f32; each batch normalization's
//! buffers too, as PyTorch names them: `running_mean`, `running_var` (f32) and
//! `num_batches_tracked` (an i64 scalar: the training steps taken, all of which it normalized),
//! so that `load_state_dict` of the equivalent `nn.Sequential` takes the file as it is. The optimizer's state, when saved,
//! sits beside them: SGD's momentum buffers as `optimizer.momentum.<name>`, Adam's moments as
//! `optimizer.exp_avg.<name>` and `optimizer.exp_avg_sq.<name>` (PyTorch's names); PyTorch code
//! loading the weights skips them (`{k: v for k, v in t.items() if not k.startswith("optimizer.")}`).
//! Metadata (strings): `format`, `spec` (the network), `seed`, `epoch` (epochs completed),
//! `epochs` (the run's planned epochs, which the schedule spans), `step` (optimizer steps taken),
//! `batch_size`, `optimizer` (sgd, adam, adamw), `lr`, `momentum`, `beta1`, `beta2`, `eps`,
//! `weight_decay`, `schedule` (constant, step, cosine, onecycle), `lr_decay`, `warmup`,
//! `normalize_mean`, `normalize_std`, `classes` (the names of the network's outputs in label
//! order, a JSON list of strings, e.g. `["T-shirt/top","Trouser",...]`), `augment` (`off`, or the
//! training images' augmentation as `shift=2,rotate=10,scale=0.1,flip=0`; checkpoints without it
//! trained without). Checkpoints written before
//! the optimizer and schedule fields existed load as SGD with the step schedule; those without
//! `classes` name their classes by digit, "0" to "9" (they were all trained on MNIST).
//! Class names are checked on loading like a data folder's `classes.txt`
//! ([`crate::data::check_class_names`]): one per output, non-blank, no control characters.
//!
//! Writes are atomic: the file is written beside its destination under a temporary name, flushed,
//! then renamed over it, so an interrupted save never leaves a broken checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::data::Normalization;
use crate::exec::{Optimizer, OptimizerKind};
use crate::network::{Network, Shape};
use crate::ops::Augment;
use crate::schedule::{Schedule, ScheduleKind, Warmup};
use crate::spec::NetSpec;

pub const FORMAT: &str = "wgcnn-checkpoint-1";
const MOMENTUM_PREFIX: &str = "optimizer.momentum.";
const EXP_AVG_PREFIX: &str = "optimizer.exp_avg.";
const EXP_AVG_SQ_PREFIX: &str = "optimizer.exp_avg_sq.";

/// What a checkpoint holds besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub spec: NetSpec,
    pub seed: u64,
    pub epoch: usize,
    /// The run's planned epochs (what a schedule spans; `epoch` in older checkpoints).
    pub epochs: usize,
    pub step: u64,
    pub batch_size: usize,
    /// The optimizer with its base learning rate.
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub normalization: Normalization,
    /// The name of each output class, in label order (the digits for MNIST).
    pub classes: Vec<String>,
    /// How the training images were augmented, if they were.
    pub augment: Option<Augment>,
}

/// The optimizer's state: the first buffer per parameter (SGD's momentum, Adam's `exp_avg`) and,
/// for Adam, the second (`exp_avg_sq`).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    pub first: Vec<Vec<f32>>,
    pub second: Option<Vec<Vec<f32>>>,
}

/// A loaded checkpoint: the network it describes, its parameters, and the optimizer's state if
/// saved.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub info: CheckpointInfo,
    pub network: Network,
    pub params: Vec<Vec<f32>>,
    /// Batch normalization's running statistics ([`Network::buffers`] order).
    pub buffers: Vec<Vec<f32>>,
    pub state: Option<OptimizerState>,
}

/// Write `params` and the running statistics `running` (and the optimizer's `state`, if given,
/// under the names of `info.optimizer`) of `net` to `path`, atomically.
pub fn save(
    path: &Path,
    net: &Network,
    params: &[Vec<f32>],
    running: &[Vec<f32>],
    state: Option<&OptimizerState>,
    info: &CheckpointInfo,
) -> Result<()> {
    let mut names = Vec::new();
    let mut buffers: Vec<(&[f32], Vec<usize>)> = Vec::new();
    for (p, values) in net.params.iter().zip(params) {
        names.push(p.name.clone());
        buffers.push((values, p.shape.clone()));
    }
    anyhow::ensure!(
        running.len() == net.buffers.len(),
        "{}: {} running statistics, expected {}",
        path.display(),
        running.len(),
        net.buffers.len()
    );
    for (b, values) in net.buffers.iter().zip(running) {
        names.push(b.name.clone());
        buffers.push((values, b.shape.clone()));
    }
    if let Some(state) = state {
        let adam = info.optimizer.kind != OptimizerKind::Sgd;
        let first = if adam {
            EXP_AVG_PREFIX
        } else {
            MOMENTUM_PREFIX
        };
        let mut tensors = vec![(first, &state.first)];
        if adam {
            let second = state
                .second
                .as_ref()
                .ok_or_else(|| anyhow!("{}: Adam's second moment is missing", path.display()))?;
            tensors.push((EXP_AVG_SQ_PREFIX, second));
        }
        for (prefix, values) in tensors {
            for (p, values) in net.params.iter().zip(values) {
                names.push(format!("{prefix}{}", p.name));
                buffers.push((values, p.shape.clone()));
            }
        }
    }
    let mut views: Vec<(String, TensorView<'_>)> = names
        .into_iter()
        .zip(&buffers)
        .map(|(name, (values, shape))| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
                .expect("shape matches data");
            (name, view)
        })
        .collect();
    // PyTorch's batch-normalization counter: one per layer, every training step counted.
    let tracked = (info.step as i64).to_le_bytes();
    for l in net.layers.iter().filter(|l| l.running.is_some()) {
        let view = TensorView::new(Dtype::I64, vec![], &tracked).expect("an i64 scalar");
        views.push((format!("{}.num_batches_tracked", l.index), view));
    }
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("spec", info.spec.to_string()),
        ("seed", info.seed.to_string()),
        ("epoch", info.epoch.to_string()),
        ("epochs", info.epochs.to_string()),
        ("step", info.step.to_string()),
        ("batch_size", info.batch_size.to_string()),
        ("optimizer", info.optimizer.kind.to_string()),
        ("lr", info.optimizer.lr.to_string()),
        ("momentum", info.optimizer.momentum.to_string()),
        ("beta1", info.optimizer.beta1.to_string()),
        ("beta2", info.optimizer.beta2.to_string()),
        ("eps", info.optimizer.eps.to_string()),
        ("weight_decay", info.optimizer.weight_decay.to_string()),
        ("schedule", info.schedule.kind.to_string()),
        ("lr_decay", info.schedule.decay.to_string()),
        ("warmup", info.schedule.warmup.to_string()),
        ("normalize_mean", info.normalization.mean.to_string()),
        ("normalize_std", info.normalization.std.to_string()),
        ("classes", serde_json::json!(info.classes).to_string()),
        (
            "augment",
            info.augment.map_or("off".to_string(), |a| a.to_string()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| anyhow!("{}: cannot encode the checkpoint: {e}", path.display()))?;
    write_atomically(path, &bytes)
}

/// Temporary files being written (see [`write_atomically`]), removed by
/// [`remove_temporary_files`] when the process is interrupted.
static IN_PROGRESS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Remove every temporary file a write has not finished with (Ctrl-C, SIGTERM).
pub fn remove_temporary_files() {
    let files = IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
    for tmp in files.iter() {
        let _ = std::fs::remove_file(tmp);
    }
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename. A symbolic
/// link is written through (its target is replaced, the link kept); a destination that is not a
/// regular file (a device, a pipe, a folder) is refused. The temporary name is short, whatever
/// the destination's length, and removed on failure or interruption.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).map_err(|e| {
            anyhow!(
                "{}: a link whose target cannot be reached: {e}",
                path.display()
            )
        })?,
        _ => path.to_path_buf(),
    };
    if let Ok(m) = std::fs::metadata(&target) {
        if !m.is_file() {
            bail!(
                "{}: not a regular file (a folder, device or pipe); expected a file to write",
                path.display()
            );
        }
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if target.file_name().is_none() {
        bail!("{}: not a file name", path.display());
    }
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".wgcnn-{}-{n}.tmp", std::process::id()));
    IN_PROGRESS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(tmp.clone());
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    IN_PROGRESS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|t| t != &tmp);
    if let Err(e) = result {
        bail!("{}: cannot write: {e}", path.display());
    }
    Ok(())
}

fn tensor_f32(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
    expected: &[usize],
    what: &str,
) -> Result<Option<Vec<f32>>> {
    let t = match st.tensor(name) {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    if t.dtype() != Dtype::F32 {
        bail!(
            "{}: tensor '{name}' ({what}) is {:?}; expected F32",
            path.display(),
            t.dtype()
        );
    }
    if t.shape() != expected {
        bail!(
            "{}: tensor '{name}' ({what}) has shape {:?}; the network needs {:?}",
            path.display(),
            t.shape(),
            expected
        );
    }
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: tensor '{name}' ({what}) holds {} at index {i}; expected finite numbers (a diverged run?)",
            path.display(),
            values[i]
        );
    }
    Ok(Some(values))
}

/// The most epochs a checkpoint may claim (an absurd count is a corrupt file, and epoch + 1
/// must not overflow).
const MAX_EPOCHS: usize = 1_000_000;

/// Every metadata value in its range, the file and the field named otherwise.
fn check_info(path: &Path, i: &CheckpointInfo) -> Result<()> {
    let o = &i.optimizer;
    let bad = |field: &str, value: String, expected: &str| -> Result<()> {
        bail!(
            "{}: metadata '{field}' is {value}; expected {expected}",
            path.display()
        )
    };
    if i.epoch > MAX_EPOCHS {
        bad("epoch", i.epoch.to_string(), "at most 1000000")?;
    }
    if i.epochs > MAX_EPOCHS {
        bad("epochs", i.epochs.to_string(), "at most 1000000")?;
    }
    if i.batch_size == 0 {
        bad("batch_size", "0".into(), "at least 1")?;
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        bad("lr", o.lr.to_string(), "a positive number")?;
    }
    if !(0.0..1.0).contains(&o.momentum) {
        bad("momentum", o.momentum.to_string(), "a number in [0, 1)")?;
    }
    for (field, beta) in [("beta1", o.beta1), ("beta2", o.beta2)] {
        if !(0.0..1.0).contains(&beta) {
            bad(field, beta.to_string(), "a number in [0, 1)")?;
        }
    }
    if !(o.eps.is_finite() && o.eps > 0.0) {
        bad("eps", o.eps.to_string(), "a positive number")?;
    }
    if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
        bad("weight_decay", o.weight_decay.to_string(), "0 or more")?;
    }
    let decay = i.schedule.decay;
    if !(decay > 0.0 && decay <= 1.0) {
        bad("lr_decay", decay.to_string(), "a number in (0, 1]")?;
    }
    let n = &i.normalization;
    if !n.mean.is_finite() {
        bad("normalize_mean", n.mean.to_string(), "a finite number")?;
    }
    if !(n.std.is_finite() && n.std > 0.0) {
        bad("normalize_std", n.std.to_string(), "a positive number")?;
    }
    Ok(())
}

fn meta<'a>(path: &Path, metadata: &'a HashMap<String, String>, key: &str) -> Result<&'a str> {
    metadata
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("{}: the checkpoint's metadata has no '{key}'; expected a file written by `wgcnn train --save`", path.display()))
}

fn parse_meta<T: std::str::FromStr>(
    path: &Path,
    metadata: &HashMap<String, String>,
    key: &str,
) -> Result<T> {
    let text = meta(path, metadata, key)?;
    text.parse().map_err(|_| {
        anyhow!(
            "{}: metadata '{key}' is '{text}', which is not a valid value",
            path.display()
        )
    })
}

/// Load a checkpoint for MNIST-shaped input, checking every tensor against the network its
/// metadata describes (or against `spec`, when given, e.g. to resume a run).
pub fn load(path: &Path, input: Shape, spec: Option<&NetSpec>) -> Result<Checkpoint> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the checkpoint", path.display()))?;
    load_bytes(path, &bytes, input, spec)
}

/// [`load`] from the file's bytes; `path` names it in errors.
pub fn load_bytes(
    path: &Path,
    bytes: &[u8],
    input: Shape,
    spec: Option<&NetSpec>,
) -> Result<Checkpoint> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow!(
            "{}: not a valid safetensors checkpoint (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("{}: unreadable header: {e}", path.display()))?;
    let empty = HashMap::new();
    let metadata = header.metadata().as_ref().unwrap_or(&empty);
    let stored_spec = NetSpec::parse(meta(path, metadata, "spec")?)
        .map_err(|e| anyhow!("{}: metadata 'spec': {e}", path.display()))?;
    let spec = spec.cloned().unwrap_or(stored_spec);
    let network = Network::new(&spec, input).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    network
        .check_outputs(crate::data::NUM_CLASSES)
        .map_err(|e| anyhow!("{}: metadata 'spec': {e}", path.display()))?;
    // Fields added with the optimizers and schedules: older checkpoints are SGD, step schedule.
    let optional = |key: &str| metadata.contains_key(key);
    let defaults = Optimizer::default();
    let epoch: usize = parse_meta(path, metadata, "epoch")?;
    let optimizer = Optimizer {
        kind: if optional("optimizer") {
            parse_meta(path, metadata, "optimizer")?
        } else {
            OptimizerKind::Sgd
        },
        lr: parse_meta(path, metadata, "lr")?,
        momentum: parse_meta(path, metadata, "momentum")?,
        beta1: optional_meta(path, metadata, "beta1", defaults.beta1)?,
        beta2: optional_meta(path, metadata, "beta2", defaults.beta2)?,
        eps: optional_meta(path, metadata, "eps", defaults.eps)?,
        weight_decay: optional_meta(path, metadata, "weight_decay", 0.0)?,
    };
    let schedule = Schedule {
        kind: optional_meta(path, metadata, "schedule", ScheduleKind::Step)?,
        decay: optional_meta(path, metadata, "lr_decay", 1.0)?,
        warmup: optional_meta(path, metadata, "warmup", Warmup::None)?,
    };
    let info = CheckpointInfo {
        spec: spec.clone(),
        seed: parse_meta(path, metadata, "seed")?,
        epoch,
        epochs: optional_meta(path, metadata, "epochs", epoch)?,
        step: parse_meta(path, metadata, "step")?,
        batch_size: parse_meta(path, metadata, "batch_size")?,
        optimizer,
        schedule,
        normalization: Normalization {
            mean: parse_meta(path, metadata, "normalize_mean")?,
            std: parse_meta(path, metadata, "normalize_std")?,
        },
        classes: class_names(path, metadata, network.classes())?,
        augment: match metadata.get("augment").map(String::as_str) {
            None | Some("off") => None,
            Some(text) => Some(text.parse::<Augment>().map_err(|e| {
                anyhow!(
                    "{}: metadata 'augment' is '{text}': {e}; expected off or shift=N,rotate=DEG,scale=F,flip=0|1",
                    path.display()
                )
            })?),
        },
    };
    check_info(path, &info)?;
    let mut params = Vec::new();
    for p in &network.params {
        let what = format!("{} of the network {spec}", p.name);
        match tensor_f32(path, &st, &p.name, &p.shape, &what)? {
            Some(values) => params.push(values),
            None => bail!("{}: the checkpoint has no tensor '{}' (shape {:?}), which the network {spec} needs", path.display(), p.name, p.shape),
        }
    }
    let mut running = Vec::new();
    for b in &network.buffers {
        let what = format!("{} of the network {spec}", b.name);
        match tensor_f32(path, &st, &b.name, &b.shape, &what)? {
            Some(values) => running.push(values),
            None => bail!("{}: the checkpoint has no tensor '{}' (shape {:?}), which the network {spec} needs", path.display(), b.name, b.shape),
        }
        if b.name.ends_with("running_var") {
            if let Some(i) = running.last().unwrap().iter().position(|&v| v < 0.0) {
                bail!(
                    "{}: tensor '{}' holds a negative variance at index {i}; expected values >= 0",
                    path.display(),
                    b.name
                );
            }
        }
    }
    for l in network.layers.iter().filter(|l| l.running.is_some()) {
        let name = format!("{}.num_batches_tracked", l.index);
        if let Ok(t) = st.tensor(&name) {
            if t.dtype() != Dtype::I64 || !t.shape().is_empty() {
                bail!(
                    "{}: tensor '{name}' is {:?} of shape {:?}; expected an I64 scalar (PyTorch's batch counter)",
                    path.display(),
                    t.dtype(),
                    t.shape()
                );
            }
        }
    }
    // The optimizer's state, under the names of its optimizer: all or nothing per buffer.
    let buffers = |prefix: &str, what: &str| -> Result<Option<Vec<Vec<f32>>>> {
        let mut found = Vec::new();
        for p in &network.params {
            let name = format!("{prefix}{}", p.name);
            if let Some(values) = tensor_f32(path, &st, &name, &p.shape, what)? {
                found.push(values);
            }
        }
        match found.len() {
            0 => Ok(None),
            n if n == network.params.len() => Ok(Some(found)),
            n => bail!(
                "{}: the checkpoint has {what} for {n} of the {} parameters; expected all or none",
                path.display(),
                network.params.len()
            ),
        }
    };
    let state = if optimizer.kind == OptimizerKind::Sgd {
        buffers(MOMENTUM_PREFIX, "momentum")?.map(|first| OptimizerState {
            first,
            second: None,
        })
    } else {
        match (
            buffers(EXP_AVG_PREFIX, "exp_avg")?,
            buffers(EXP_AVG_SQ_PREFIX, "exp_avg_sq")?,
        ) {
            (Some(first), Some(second)) => Some(OptimizerState {
                first,
                second: Some(second),
            }),
            (None, None) => None,
            _ => bail!(
                "{}: the checkpoint has one of Adam's two moments ({EXP_AVG_PREFIX}*, {EXP_AVG_SQ_PREFIX}*) without the other",
                path.display()
            ),
        }
    };
    Ok(Checkpoint {
        info,
        network,
        params,
        buffers: running,
        state,
    })
}

/// The `classes` metadata: a JSON list of `outputs` names, each checked; the digits when absent
/// (checkpoints written before class names were recorded were all trained on MNIST).
fn class_names(
    path: &Path,
    metadata: &HashMap<String, String>,
    outputs: usize,
) -> Result<Vec<String>> {
    let Some(text) = metadata.get("classes") else {
        return Ok(crate::data::digit_classes());
    };
    let names: Vec<String> = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{}: metadata 'classes' is not a JSON list of strings ({e}); expected the class names in label order, e.g. [\"0\",\"1\",...]",
            path.display()
        )
    })?;
    crate::data::check_class_names(&names, outputs)
        .map_err(|problem| anyhow!("{}: metadata 'classes': {problem}", path.display()))?;
    Ok(names)
}

/// A metadata field that older checkpoints lack: `default` when absent.
fn optional_meta<T: std::str::FromStr>(
    path: &Path,
    metadata: &HashMap<String, String>,
    key: &str,
    default: T,
) -> Result<T> {
    if metadata.contains_key(key) {
        parse_meta(path, metadata, key)
    } else {
        Ok(default)
    }
}
