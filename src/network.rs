//! A network resolved for an input shape: every layer's input and output shape, its parameters
//! with PyTorch's names and layouts, and their seeded initialisation. Executors run a [`Network`];
//! they never re-derive shapes.
//!
//! Parameter names are those of the equivalent `torch.nn.Sequential` (a `Flatten` is inserted
//! before the first dense layer that follows a spatial one), e.g. `0.weight`, `0.bias`, `4.weight`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ops::{BatchNormShape, Conv2dShape, DenseShape, Pool2dShape};
use crate::spec::{Layer, Loss, NetSpec};

/// The shape of one sample: channels, height, width (a flat vector is `[n, 1, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_flat() {
            write!(f, "{}", self.channels)
        } else {
            write!(f, "{}x{}x{}", self.channels, self.height, self.width)
        }
    }
}

/// One parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// PyTorch `state_dict` name, e.g. `0.weight`.
    pub name: String,
    /// PyTorch layout, e.g. `[out, in, k, k]`.
    pub shape: Vec<usize>,
    /// Inputs feeding one output; the init bound is `1/sqrt(fan_in)`.
    pub fan_in: usize,
    /// A constant initial value instead of the uniform draw (batch normalization's weight 1 and
    /// bias 0; its running mean 0 and variance 1). Such a tensor draws nothing from the seed.
    pub constant: Option<f32>,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A layer with its shapes and the indices of its parameters in [`Network::params`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLayer {
    pub layer: Layer,
    pub input: Shape,
    pub output: Shape,
    pub weight: Option<usize>,
    pub bias: Option<usize>,
    /// Batch normalization: the index in [`Network::buffers`] of its running mean (the running
    /// variance follows it).
    pub running: Option<usize>,
    /// Seed offset for dropout layers, so two dropout layers draw different masks.
    pub index: usize,
}

impl ResolvedLayer {
    pub fn conv_shape(&self, batch: usize) -> Conv2dShape {
        match self.layer {
            Layer::Conv2d {
                out_channels,
                kernel_size,
                stride,
                padding,
                ..
            } => Conv2dShape {
                batch,
                in_channels: self.input.channels,
                in_height: self.input.height,
                in_width: self.input.width,
                out_channels,
                kernel_size,
                stride,
                padding,
            },
            _ => panic!("conv_shape called on {}", self.layer),
        }
    }

    pub fn pool_shape(&self, batch: usize) -> Pool2dShape {
        match self.layer {
            Layer::MaxPool2d { window, stride } | Layer::AvgPool2d { window, stride } => {
                Pool2dShape {
                    batch,
                    channels: self.input.channels,
                    in_height: self.input.height,
                    in_width: self.input.width,
                    window,
                    stride,
                }
            }
            _ => panic!("pool_shape called on {}", self.layer),
        }
    }

    /// Batch normalization's shape: its input's channels (features, for a flat input) and the
    /// values per channel of one sample.
    pub fn norm_shape(&self, batch: usize) -> BatchNormShape {
        BatchNormShape {
            batch,
            channels: self.input.channels,
            spatial: self.input.height * self.input.width,
        }
    }

    pub fn dense_shape(&self, batch: usize) -> DenseShape {
        DenseShape {
            batch,
            in_features: self.input.len(),
            out_features: self.output.len(),
        }
    }
}

/// A network resolved for an input shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub spec: NetSpec,
    pub input: Shape,
    pub layers: Vec<ResolvedLayer>,
    pub params: Vec<ParamInfo>,
    /// State that is not trained by gradients: each batch normalization's running mean and
    /// variance (PyTorch's buffers, e.g. `1.running_mean`, `1.running_var`).
    pub buffers: Vec<ParamInfo>,
}

impl Network {
    /// Resolve `spec` for samples of shape `input`; fails with a message naming the layer when a
    /// shape does not fit (a kernel larger than its padded input, say).
    pub fn new(spec: &NetSpec, input: Shape) -> Result<Network, String> {
        let mut layers: Vec<ResolvedLayer> = Vec::new();
        let mut tensors = (Vec::new(), Vec::new());
        let mut shape = input;
        for &layer in &spec.layers {
            // A dense layer reads a flat vector: insert the Flatten that PyTorch would need.
            if matches!(layer, Layer::Dense { .. }) && !shape.is_flat() {
                shape = resolve_layer(Layer::Flatten, shape, &mut layers, &mut tensors)?;
            }
            shape = resolve_layer(layer, shape, &mut layers, &mut tensors)?;
        }
        let (params, buffers) = tensors;
        Ok(Network {
            spec: spec.clone(),
            input,
            layers,
            params,
            buffers,
        })
    }

    /// The number of classes: the size of the last layer's output.
    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output.len())
    }

    /// Bytes a CPU executor needs at the least, as (fixed, per sample of the batch): each
    /// parameter four times (the values, the gradient, two optimizer buffers) plus the initial
    /// copy, and each layer's input and output, with their gradients.
    pub fn memory_estimate(&self) -> (u64, u64) {
        let params: u64 = self.params.iter().map(|p| p.len() as u64).sum();
        let activations: u64 = self
            .layers
            .iter()
            .map(|l| (l.input.len() + l.output.len()) as u64)
            .sum();
        (4 * 5 * params, 4 * 2 * activations)
    }

    /// The network ends in one output per class of a data set with `classes` classes, as its loss
    /// needs (softmax, or one sigmoid a class).
    pub fn check_outputs(&self, classes: usize) -> Result<(), String> {
        if self.classes() != classes {
            return Err(format!(
                "the network {} ends in {} outputs, but the data has {classes} classes: its last layer must be dense{classes}",
                self.spec,
                self.classes()
            ));
        }
        Ok(())
    }

    pub fn loss(&self) -> Loss {
        self.spec.loss
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(ParamInfo::len).sum()
    }

    /// PyTorch's default initialisation for conv and linear layers: weights and biases uniform in
    /// `[-1/sqrt(fan_in), 1/sqrt(fan_in)]` (what `kaiming_uniform_(a=sqrt(5))` works out to),
    /// drawn from ChaCha8 seeded with `seed`, tensor by tensor in order.
    pub fn init_params(&self, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.params
            .iter()
            .map(|p| {
                if let Some(value) = p.constant {
                    return vec![value; p.len()];
                }
                let bound = 1.0 / (p.fan_in as f32).sqrt();
                (0..p.len())
                    .map(|_| rng.random_range(-bound..bound))
                    .collect()
            })
            .collect()
    }

    /// The initial buffers: running means 0, running variances 1 (PyTorch's).
    pub fn init_buffers(&self) -> Vec<Vec<f32>> {
        self.buffers
            .iter()
            .map(|b| vec![b.constant.unwrap_or(0.0); b.len()])
            .collect()
    }

    /// Whether some layer is a batch normalization.
    pub fn has_batch_norm(&self) -> bool {
        !self.buffers.is_empty()
    }

    /// A batch normalization after a flat layer (PyTorch's `BatchNorm1d`) has one value a
    /// feature per sample, so it cannot train on a batch of one: PyTorch refuses, and so does
    /// this, naming the layer.
    pub fn check_batch(&self, batch: usize) -> Result<(), String> {
        if batch >= 2 {
            return Ok(());
        }
        match self
            .layers
            .iter()
            .find(|l| l.layer == Layer::BatchNorm && l.input.is_flat())
        {
            Some(l) => Err(format!(
                "layer {} (bn) normalizes {} features over the batch, and a batch of {batch} has one value a feature: use a batch size of at least 2 (and one that leaves no last batch of 1)",
                l.index, l.input.channels
            )),
            None => Ok(()),
        }
    }

    /// One line per layer: what it is, its output shape and parameter count.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for l in &self.layers {
            let count: usize = [l.weight, l.bias]
                .iter()
                .flatten()
                .map(|&p| self.params[p].len())
                .sum();
            out.push_str(&format!(
                "  {:>2}  {:<12} -> {:<10} {:>8} params\n",
                l.index,
                l.layer.to_string(),
                l.output.to_string(),
                count
            ));
        }
        out.push_str(&format!(
            "  loss: {:?}; {} parameters in all\n",
            self.spec.loss,
            self.parameter_count()
        ));
        out
    }
}

/// Append `layer`, reading samples of shape `shape`, to `layers` (and its parameters to `params`);
/// returns its output shape.
/// The most elements any one tensor of a network (a weight, or one sample's activations) may
/// have: 2^28 (1 GiB of f32), far beyond what an MNIST network needs.
pub const MAX_ELEMENTS: usize = 1 << 28;

fn resolve_layer(
    layer: Layer,
    shape: Shape,
    layers: &mut Vec<ResolvedLayer>,
    (params, buffers): &mut (Vec<ParamInfo>, Vec<ParamInfo>),
) -> Result<Shape, String> {
    let index = layers.len();
    let fail = |what: String| format!("layer {index} ({layer}) on input {shape}: {what}");
    // Every size is checked before anything is computed from it: no overflow, no wrap-around,
    // and no tensor beyond MAX_ELEMENTS.
    let too_big = |what: &str, n: Option<usize>| -> Result<usize, String> {
        match n {
            Some(n) if n <= MAX_ELEMENTS => Ok(n),
            _ => Err(fail(format!(
                "its {what} would have more than {MAX_ELEMENTS} elements; use fewer channels, features or less padding"
            ))),
        }
    };
    match layer {
        Layer::Conv2d {
            out_channels,
            kernel_size,
            padding,
            ..
        } => {
            let padded = padding
                .checked_mul(2)
                .and_then(|p| p.checked_add(shape.height.max(shape.width)));
            too_big("padded input", padded)?;
            too_big(
                "weight",
                out_channels
                    .checked_mul(shape.channels)
                    .and_then(|n| n.checked_mul(kernel_size))
                    .and_then(|n| n.checked_mul(kernel_size)),
            )?;
        }
        Layer::Dense { out_features, .. } => {
            too_big("weight", out_features.checked_mul(shape.len()))?;
        }
        _ => {}
    }
    let tensor = |suffix: &str, dims: Vec<usize>, fan_in: usize, constant: Option<f32>| ParamInfo {
        name: format!("{index}.{suffix}"),
        shape: dims,
        fan_in,
        constant,
    };
    let mut running = None;
    if layer == Layer::BatchNorm {
        running = Some(buffers.len());
        buffers.push(tensor("running_mean", vec![shape.channels], 1, Some(0.0)));
        buffers.push(tensor("running_var", vec![shape.channels], 1, Some(1.0)));
    }
    let mut add_param = |suffix: &str, dims: Vec<usize>, fan_in: usize| {
        params.push(tensor(suffix, dims, fan_in, None));
        Some(params.len() - 1)
    };
    let (output, weight, bias) = match layer {
        Layer::Conv2d {
            out_channels,
            kernel_size,
            stride,
            padding,
            bias,
        } => {
            let (ph, pw) = (shape.height + 2 * padding, shape.width + 2 * padding);
            if kernel_size > ph || kernel_size > pw {
                return Err(fail(format!(
                    "kernel {kernel_size} is larger than the padded input {ph}x{pw}"
                )));
            }
            let fan_in = shape.channels * kernel_size * kernel_size;
            let weight = add_param(
                "weight",
                vec![out_channels, shape.channels, kernel_size, kernel_size],
                fan_in,
            );
            let bias = if bias {
                add_param("bias", vec![out_channels], fan_in)
            } else {
                None
            };
            let output = Shape {
                channels: out_channels,
                height: (ph - kernel_size) / stride + 1,
                width: (pw - kernel_size) / stride + 1,
            };
            (output, weight, bias)
        }
        Layer::MaxPool2d { window, stride } | Layer::AvgPool2d { window, stride } => {
            if window > shape.height || window > shape.width {
                return Err(fail(format!("window {window} is larger than the input")));
            }
            let output = Shape {
                channels: shape.channels,
                height: (shape.height - window) / stride + 1,
                width: (shape.width - window) / stride + 1,
            };
            (output, None, None)
        }
        Layer::Flatten => (
            Shape {
                channels: shape.len(),
                height: 1,
                width: 1,
            },
            None,
            None,
        ),
        Layer::Dense { out_features, bias } => {
            let fan_in = shape.len();
            let weight = add_param("weight", vec![out_features, fan_in], fan_in);
            let bias = if bias {
                add_param("bias", vec![out_features], fan_in)
            } else {
                None
            };
            (
                Shape {
                    channels: out_features,
                    height: 1,
                    width: 1,
                },
                weight,
                bias,
            )
        }
        Layer::Relu | Layer::Tanh | Layer::Sigmoid | Layer::Dropout { .. } => (shape, None, None),
        Layer::BatchNorm => {
            let c = shape.channels;
            params.push(tensor("weight", vec![c], 1, Some(1.0)));
            params.push(tensor("bias", vec![c], 1, Some(0.0)));
            (shape, Some(params.len() - 2), Some(params.len() - 1))
        }
    };
    too_big(
        "output",
        output
            .channels
            .checked_mul(output.height)
            .and_then(|n| n.checked_mul(output.width)),
    )?;
    layers.push(ResolvedLayer {
        layer,
        input: shape,
        output,
        weight,
        bias,
        running,
        index,
    });
    Ok(output)
}

/// The dropout seed of layer `layer_index` in a run seeded with `seed` (each layer its own stream).
pub fn dropout_seed(seed: u64, layer_index: usize) -> u32 {
    (seed as u32) ^ ((seed >> 32) as u32) ^ (layer_index as u32).wrapping_mul(0x9e37_79b9)
}
