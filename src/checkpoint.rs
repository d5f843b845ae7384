//! Checkpoints in safetensors, readable by PyTorch.
//!
//! Tensors: every parameter under its PyTorch `state_dict` name and layout (`0.weight` as
//! `[out, in, k, k]`, `4.weight` as `[out, in]`, biases), f32. The SGD momentum buffers, when
//! saved, sit beside them as `optimizer.momentum.<name>`; PyTorch code loading the weights skips
//! them (`{k: v for k, v in t.items() if not k.startswith("optimizer.")}`).
//! Metadata (strings): `format`, `spec` (the network), `seed`, `epoch` (epochs completed), `step`
//! (SGD steps taken), `batch_size`, `lr`, `lr_decay`, `momentum`, `normalize_mean`, `normalize_std`.
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
use crate::network::{Network, Shape};
use crate::spec::NetSpec;

pub const FORMAT: &str = "wgcnn-checkpoint-1";
const MOMENTUM_PREFIX: &str = "optimizer.momentum.";

/// What a checkpoint holds besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub spec: NetSpec,
    pub seed: u64,
    pub epoch: usize,
    pub step: u64,
    pub batch_size: usize,
    pub lr: f32,
    /// The learning rate's factor per epoch (1 in checkpoints written before it existed).
    pub lr_decay: f32,
    pub momentum: f32,
    pub normalization: Normalization,
}

/// A loaded checkpoint: the network it describes, its parameters, and the momentum if saved.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub info: CheckpointInfo,
    pub network: Network,
    pub params: Vec<Vec<f32>>,
    pub momentum: Option<Vec<Vec<f32>>>,
}

/// Write `params` (and `momentum`, if given) of `net` to `path`, atomically.
pub fn save(
    path: &Path,
    net: &Network,
    params: &[Vec<f32>],
    momentum: Option<&[Vec<f32>]>,
    info: &CheckpointInfo,
) -> Result<()> {
    let mut names = Vec::new();
    let mut buffers: Vec<(&[f32], Vec<usize>)> = Vec::new();
    for (p, values) in net.params.iter().zip(params) {
        names.push(p.name.clone());
        buffers.push((values, p.shape.clone()));
    }
    if let Some(momentum) = momentum {
        for (p, values) in net.params.iter().zip(momentum) {
            names.push(format!("{MOMENTUM_PREFIX}{}", p.name));
            buffers.push((values, p.shape.clone()));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = names
        .into_iter()
        .zip(&buffers)
        .map(|(name, (values, shape))| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
                .expect("shape matches data");
            (name, view)
        })
        .collect();
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("spec", info.spec.to_string()),
        ("seed", info.seed.to_string()),
        ("epoch", info.epoch.to_string()),
        ("step", info.step.to_string()),
        ("batch_size", info.batch_size.to_string()),
        ("lr", info.lr.to_string()),
        ("lr_decay", info.lr_decay.to_string()),
        ("momentum", info.momentum.to_string()),
        ("normalize_mean", info.normalization.mean.to_string()),
        ("normalize_std", info.normalization.std.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| anyhow!("{}: cannot encode the checkpoint: {e}", path.display()))?;
    write_atomically(path, &bytes)
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
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
    Ok(Some(
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
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
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!(
            "{}: not a valid safetensors checkpoint (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: unreadable header: {e}", path.display()))?;
    let empty = HashMap::new();
    let metadata = header.metadata().as_ref().unwrap_or(&empty);
    let stored_spec = NetSpec::parse(meta(path, metadata, "spec")?)
        .map_err(|e| anyhow!("{}: metadata 'spec': {e}", path.display()))?;
    let spec = spec.cloned().unwrap_or(stored_spec);
    let network = Network::new(&spec, input).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let info = CheckpointInfo {
        spec: spec.clone(),
        seed: parse_meta(path, metadata, "seed")?,
        epoch: parse_meta(path, metadata, "epoch")?,
        step: parse_meta(path, metadata, "step")?,
        batch_size: parse_meta(path, metadata, "batch_size")?,
        lr: parse_meta(path, metadata, "lr")?,
        lr_decay: match metadata.get("lr_decay") {
            Some(_) => parse_meta(path, metadata, "lr_decay")?,
            None => 1.0,
        },
        momentum: parse_meta(path, metadata, "momentum")?,
        normalization: Normalization {
            mean: parse_meta(path, metadata, "normalize_mean")?,
            std: parse_meta(path, metadata, "normalize_std")?,
        },
    };
    let mut params = Vec::new();
    let mut momentum = Vec::new();
    for p in &network.params {
        let what = format!("{} of the network {spec}", p.name);
        match tensor_f32(path, &st, &p.name, &p.shape, &what)? {
            Some(values) => params.push(values),
            None => bail!("{}: the checkpoint has no tensor '{}' (shape {:?}), which the network {spec} needs", path.display(), p.name, p.shape),
        }
        if let Some(values) = tensor_f32(
            path,
            &st,
            &format!("{MOMENTUM_PREFIX}{}", p.name),
            &p.shape,
            "momentum",
        )? {
            momentum.push(values);
        }
    }
    let momentum = match momentum.len() {
        0 => None,
        n if n == network.params.len() => Some(momentum),
        n => bail!(
            "{}: the checkpoint has momentum for {n} of the {} parameters; expected all or none",
            path.display(),
            network.params.len()
        ),
    };
    Ok(Checkpoint {
        info,
        network,
        params,
        momentum,
    })
}
