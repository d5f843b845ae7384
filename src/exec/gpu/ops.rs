//! Run one op's kernels on host data and read everything back: what the tests use to hold each
//! WGSL entry point to its CPU twin. It runs the dispatches of [`super::plan`] through the same
//! pipelines, bind layouts and dimension uniforms as the executor; only the buffers are made per
//! call.

use anyhow::Result;

use crate::data::Normalization;
use crate::exec::gpu::context::Gpu;
use crate::exec::gpu::kernels::{self, Kernels};
use crate::exec::gpu::plan::{self, Fused, OpPlan};
use crate::ops::{Augment, BatchNormShape, Conv2dShape, DenseShape, Pool2dShape};
use crate::spec::{Layer, Loss};

/// Everything a layer with parameters computes.
#[derive(Debug, Clone)]
pub struct LayerResult {
    pub output: Vec<f32>,
    pub d_input: Vec<f32>,
    pub d_weight: Vec<f32>,
    pub d_bias: Vec<f32>,
}

/// What the loss kernels compute for one batch.
#[derive(Debug, Clone)]
pub struct LossResult {
    pub sample_loss: Vec<f32>,
    pub sample_correct: Vec<u32>,
    pub d_logits: Vec<f32>,
    /// The accumulated metrics block after one batch: loss_sum, correct, count, first_bad_step.
    pub loss_sum: f32,
    pub correct: u32,
    pub count: u32,
    pub first_bad_step: u32,
}

/// What batch normalization computes: a training step's pass (with the batch statistics), its
/// gradients and the running statistics after it, then an evaluation pass over the same input
/// with those running statistics.
#[derive(Debug, Clone)]
pub struct NormResult {
    pub layer: LayerResult,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub eval_output: Vec<f32>,
}

pub struct Ops<'a> {
    pub gpu: &'a Gpu,
    pub kernels: &'a Kernels,
}

/// `v` with zeros up to a multiple of 4 values (the optimizer kernels take 4 at a time).
fn padded4(v: &[f32]) -> Vec<f32> {
    let mut p = v.to_vec();
    p.resize(v.len().next_multiple_of(4), 0.0);
    p
}

fn bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl Ops<'_> {
    fn zeros(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.gpu.storage(label, 4 * len as u64)
    }

    /// Make `op`'s dims uniform, bind it before `buffers`, and run its forward then its backward
    /// dispatches for `batch` samples in one submission.
    fn run(&self, op: &OpPlan, batch: usize, buffers: &[&wgpu::Buffer]) -> Result<()> {
        let dims = self.gpu.constants("dims", &op.dims);
        let mut all = vec![&dims];
        all.extend_from_slice(buffers);
        let bind_group = self.kernels.bind(self.gpu, op.file, op.file, &all);
        let mut encoder = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(op.file),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(op.file),
                timestamp_writes: None,
            });
            for d in op.forward.iter().chain(&op.backward) {
                let pipeline = self
                    .kernels
                    .pipeline(self.gpu, op.file, d.entry, &op.constants)?;
                let work = d.size.work(batch);
                self.kernels
                    .dispatch(&mut pass, &pipeline, &bind_group, work);
            }
        }
        self.gpu.queue.submit(Some(encoder.finish()));
        Ok(())
    }

    /// conv2d forward, backward input, backward weight and bias, in one submission. `fused` (fast
    /// kernels only): the forward pass applies a ReLU, the input gradient the mask `input > 0` (of
    /// a ReLU before the layer).
    pub fn conv2d(
        &self,
        s: &Conv2dShape,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        d_output: &[f32],
        fused: Fused,
    ) -> Result<LayerResult> {
        let op = plan::conv2d(s, bias.is_some(), true, self.kernels.fast(), fused);
        let lens = [
            s.output_len(),
            s.input_len(),
            s.weight_len(),
            s.out_channels,
        ];
        self.layer_with_params(&op, s.batch, [input, weight, d_output], bias, lens)
    }

    /// Dense forward and both backward passes; `fused` as for [`Ops::conv2d`].
    pub fn dense(
        &self,
        s: &DenseShape,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        d_output: &[f32],
        fused: Fused,
    ) -> Result<LayerResult> {
        let (n_in, n_out, n_w) = (
            s.batch * s.in_features,
            s.batch * s.out_features,
            s.in_features * s.out_features,
        );
        let op = plan::dense(s, bias.is_some(), true, self.kernels.fast(), fused);
        let lens = [n_out, n_in, n_w, s.out_features];
        self.layer_with_params(&op, s.batch, [input, weight, d_output], bias, lens)
    }

    /// Batch normalization: a training pass and its gradients from the running statistics
    /// `running` (mean, variance), then an evaluation pass of the same input.
    pub fn batch_norm(
        &self,
        s: &BatchNormShape,
        input: &[f32],
        weight: &[f32],
        bias: &[f32],
        d_output: &[f32],
        running: (&[f32], &[f32]),
    ) -> Result<NormResult> {
        let g = self.gpu;
        let mut op = plan::batch_norm(&BatchNormShape { batch: 1, ..*s }, true);
        let len = s.batch * s.channels * s.spatial;
        let b_input = g.storage_init("input", bytes(input));
        let b_weight = g.storage_init("weight", bytes(weight));
        let b_bias = g.storage_init("bias", bytes(bias));
        let b_d_output = g.storage_init("d_output", bytes(d_output));
        let both = [running.0, running.1].concat();
        let b_running = g.storage_init("running", bytes(&both));
        let lens = [len, len, s.channels, s.channels];
        let names = ["output", "d_input", "d_weight", "d_bias"];
        let [b_output, b_d_input, b_d_weight, b_d_bias] =
            [0, 1, 2, 3].map(|i| self.zeros(names[i], lens[i]));
        let stats = self.zeros("stats", op.scratch);
        let mut read = Vec::new();
        for training in [true, false] {
            let step = g.constants("step", &kernels::step_words(s.batch, 0, 0, training));
            if !training {
                op.backward.clear();
            }
            let buffers = [
                &step,
                &b_input,
                &b_weight,
                &b_bias,
                &b_output,
                &b_d_output,
                &b_d_input,
                &b_d_weight,
                &b_d_bias,
                &stats,
                &b_running,
            ];
            self.run(&op, s.batch, &buffers)?;
            let mut wanted = vec![(&b_output, len)];
            if training {
                wanted.extend([
                    (&b_d_input, len),
                    (&b_d_weight, s.channels),
                    (&b_d_bias, s.channels),
                    (&b_running, 2 * s.channels),
                ]);
            }
            read.extend(g.read_f32(&wanted, "batchnorm")?);
        }
        let [output, d_input, d_weight, d_bias, running, eval_output] =
            <[Vec<f32>; 6]>::try_from(read).unwrap();
        Ok(NormResult {
            layer: LayerResult {
                output,
                d_input,
                d_weight,
                d_bias,
            },
            running_mean: running[..s.channels].to_vec(),
            running_var: running[s.channels..].to_vec(),
            eval_output,
        })
    }

    /// conv2d.wgsl and dense.wgsl share their bindings: make them from `data` (input, weight,
    /// d_output) and `bias`, run the op in one submission, and read back the output, d_input,
    /// d_weight and d_bias (`lens` values each).
    fn layer_with_params(
        &self,
        op: &OpPlan,
        batch: usize,
        data: [&[f32]; 3],
        bias: Option<&[f32]>,
        lens: [usize; 4],
    ) -> Result<LayerResult> {
        let g = self.gpu;
        let file = op.file;
        let [input, weight, d_output] = data;
        let step = g.constants("step", &kernels::step_words(batch, 0, 0, true));
        let b_input = g.storage_init("input", bytes(input));
        let b_weight = g.storage_init("weight", bytes(weight));
        let b_bias = g.storage_init("bias", bytes(bias.unwrap_or(&[0.0])));
        let b_d_output = g.storage_init("d_output", bytes(d_output));
        let names = ["output", "d_input", "d_weight", "d_bias"];
        let [b_output, b_d_input, b_d_weight, b_d_bias] =
            [0, 1, 2, 3].map(|i| self.zeros(names[i], lens[i]));
        let scratch = (op.scratch > 0).then(|| self.zeros("scratch", op.scratch));
        let mut buffers = vec![
            &step,
            &b_input,
            &b_weight,
            &b_bias,
            &b_output,
            &b_d_output,
            &b_d_input,
            &b_d_weight,
            &b_d_bias,
        ];
        buffers.extend(scratch.as_ref());
        self.run(op, batch, &buffers)?;
        let out = g.read_f32(
            &[
                (&b_output, lens[0]),
                (&b_d_input, lens[1]),
                (&b_d_weight, lens[2]),
                (&b_d_bias, lens[3]),
            ],
            file,
        )?;
        let [output, d_input, d_weight, d_bias] = <[Vec<f32>; 4]>::try_from(out).unwrap();
        Ok(LayerResult {
            output,
            d_input,
            d_weight,
            d_bias,
        })
    }

    /// Max (or average) pooling forward and backward: (output, d_input).
    pub fn pool2d(
        &self,
        max: bool,
        s: &Pool2dShape,
        input: &[f32],
        d_output: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.pool2d_masked(max, s, input, d_output, false)
    }

    /// [`Ops::pool2d`]; with `relu_mask` the input gradient also applies the mask `input > 0` of
    /// a ReLU before the layer (disjoint max pooling only, as in the executor's plan).
    pub fn pool2d_masked(
        &self,
        max: bool,
        s: &Pool2dShape,
        input: &[f32],
        d_output: &[f32],
        relu_mask: bool,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let g = self.gpu;
        let step = g.constants("step", &kernels::step_words(s.batch, 0, 0, true));
        let b_input = g.storage_init("input", bytes(input));
        let b_output = self.zeros("output", s.output_len());
        let b_d_output = g.storage_init("d_output", bytes(d_output));
        let b_d_input = self.zeros("d_input", s.input_len());
        let op = plan::pool(max, s, true, relu_mask, None);
        self.run(
            &op,
            s.batch,
            &[&step, &b_input, &b_output, &b_d_output, &b_d_input],
        )?;
        let mut out = g.read_f32(
            &[(&b_output, s.output_len()), (&b_d_input, s.input_len())],
            "pool op",
        )?;
        let d_input = out.pop().unwrap();
        Ok((out.pop().unwrap(), d_input))
    }

    /// An elementwise op of `activation.wgsl` or `dropout.wgsl` over `batch` samples: runs its
    /// forward then its backward pass (which reads the forward output); returns (output, d_input).
    fn elementwise(
        &self,
        op: &OpPlan,
        batch: usize,
        step_words: [u32; 4],
        input: &[f32],
        d_output: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let g = self.gpu;
        let n = input.len();
        let step = g.constants("step", &step_words);
        let b_input = g.storage_init("input", bytes(input));
        let b_output = self.zeros("output", n);
        let b_d_output = g.storage_init("d_output", bytes(d_output));
        let b_d_input = self.zeros("d_input", n);
        self.run(
            op,
            batch,
            &[&step, &b_input, &b_output, &b_d_output, &b_d_input],
        )?;
        let mut out = g.read_f32(&[(&b_output, n), (&b_d_input, n)], op.file)?;
        let d_input = out.pop().unwrap();
        Ok((out.pop().unwrap(), d_input))
    }

    /// ReLU, tanh or sigmoid (`layer`); `input` holds `batch` samples.
    pub fn activation(
        &self,
        layer: &Layer,
        batch: usize,
        input: &[f32],
        d_output: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let op = plan::activation(layer, input.len() / batch, true);
        let step = kernels::step_words(batch, 0, 0, true);
        self.elementwise(&op, batch, step, input, d_output)
    }

    /// Dropout over the whole of `input` (element indices as in a batch tensor), in training or
    /// evaluation mode.
    pub fn dropout(
        &self,
        p: f32,
        seed: u32,
        step: u32,
        training: bool,
        input: &[f32],
        d_output: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let op = plan::dropout(input.len(), p, seed, true);
        let step = kernels::step_words(1, step, 0, training);
        self.elementwise(&op, 1, step, input, d_output)
    }

    /// The fused loss and its gradient on `logits [batch, classes]`, then one metrics accumulation.
    pub fn loss(
        &self,
        loss: Loss,
        classes: usize,
        logits: &[f32],
        labels: &[u8],
        step: u32,
    ) -> Result<LossResult> {
        let g = self.gpu;
        let batch = labels.len();
        let labels32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let step_u = g.constants("step", &kernels::step_words(batch, step, 0, true));
        let b_logits = g.storage_init("logits", bytes(logits));
        let b_labels = g.storage_init("labels", bytemuck::cast_slice(&labels32));
        let b_d_logits = self.zeros("d_logits", logits.len());
        let b_loss = self.zeros("sample_loss", batch);
        let b_correct = self.zeros("sample_correct", batch);
        let b_metrics = g.storage_init("metrics", bytemuck::cast_slice(&kernels::metrics_zero()));
        let buffers = [
            &step_u,
            &b_logits,
            &b_labels,
            &b_d_logits,
            &b_loss,
            &b_correct,
            &b_metrics,
        ];
        self.run(&plan::loss(classes, loss), batch, &buffers)?;
        let out = g.read_buffers(&[&b_loss, &b_correct, &b_d_logits, &b_metrics], "loss op")?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&out[3]);
        Ok(LossResult {
            sample_loss: bytemuck::pod_collect_to_vec(&out[0][..4 * batch]),
            sample_correct: bytemuck::pod_collect_to_vec(&out[1][..4 * batch]),
            d_logits: bytemuck::pod_collect_to_vec(&out[2][..4 * logits.len()]),
            loss_sum: f32::from_bits(words[0]),
            correct: words[2],
            count: words[3],
            first_bad_step: words[4],
        })
    }

    /// One SGD step: returns (param, velocity) after it.
    pub fn sgd(
        &self,
        (lr, momentum, weight_decay): (f32, f32, f32),
        param: &[f32],
        grad: &[f32],
        velocity: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let g = self.gpu;
        let n = param.len();
        let b_param = g.storage_init("param", bytes(&padded4(param)));
        let b_grad = g.storage_init("grad", bytes(&padded4(grad)));
        let b_velocity = g.storage_init("velocity", bytes(&padded4(velocity)));
        let op = plan::sgd(n.next_multiple_of(4), lr, momentum, weight_decay);
        self.run(&op, 1, &[&b_param, &b_grad, &b_velocity])?;
        let mut out = g.read_f32(&[(&b_param, n), (&b_velocity, n)], "sgd op")?;
        let velocity = out.pop().unwrap();
        Ok((out.pop().unwrap(), velocity))
    }

    /// One Adam or AdamW step: returns (param, exp_avg, exp_avg_sq) after it.
    pub fn adam(
        &self,
        step: &crate::ops::AdamStep,
        param: &[f32],
        grad: &[f32],
        exp_avg: &[f32],
        exp_avg_sq: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let g = self.gpu;
        let n = param.len();
        let b_step = g.constants("adam step", &kernels::adam_step_words(step));
        let b_param = g.storage_init("param", bytes(&padded4(param)));
        let b_grad = g.storage_init("grad", bytes(&padded4(grad)));
        let b_m = g.storage_init("exp_avg", bytes(&padded4(exp_avg)));
        let b_v = g.storage_init("exp_avg_sq", bytes(&padded4(exp_avg_sq)));
        self.run(
            &plan::adam(n.next_multiple_of(4)),
            1,
            &[&b_step, &b_param, &b_grad, &b_m, &b_v],
        )?;
        let mut out = g.read_f32(&[(&b_param, n), (&b_m, n), (&b_v, n)], "adam op")?;
        let v = out.pop().unwrap();
        let m = out.pop().unwrap();
        Ok((out.pop().unwrap(), m, v))
    }

    /// Gather `batch` images starting at `start` (of `order`, or sequentially) and normalise them.
    #[allow(clippy::too_many_arguments)]
    pub fn gather_batch(
        &self,
        pixels_per_image: usize,
        images: &[u8],
        labels: &[u8],
        order: &[u32],
        start: usize,
        batch: usize,
        sequential: bool,
        norm: Normalization,
    ) -> Result<(Vec<f32>, Vec<u32>)> {
        let data = (pixels_per_image, images, labels, order);
        self.gather(data, start, batch, 0, sequential, norm, None)
    }

    /// [`Ops::gather_batch`] of MNIST-sized images in `order` with each image augmented as at
    /// training step `step` (`augment`: the ranges and the seed of [`crate::ops::augment_seed`]).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_batch_augmented(
        &self,
        images: &[u8],
        labels: &[u8],
        order: &[u32],
        start: usize,
        batch: usize,
        step: u32,
        norm: Normalization,
        augment: (Augment, u32),
    ) -> Result<(Vec<f32>, Vec<u32>)> {
        let data = (crate::data::IMAGE_PIXELS, images, labels, order);
        self.gather(data, start, batch, step, false, norm, Some(augment))
    }

    #[allow(clippy::too_many_arguments)]
    fn gather(
        &self,
        (pixels_per_image, images, labels, order): (usize, &[u8], &[u8], &[u32]),
        start: usize,
        batch: usize,
        step: u32,
        sequential: bool,
        norm: Normalization,
        augment: Option<(Augment, u32)>,
    ) -> Result<(Vec<f32>, Vec<u32>)> {
        let g = self.gpu;
        let labels32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let step = g.constants("step", &kernels::step_words(batch, step, start, true));
        let b_images = g.storage_init("images", images);
        let b_labels = g.storage_init("labels", bytemuck::cast_slice(&labels32));
        let b_order = g.storage_init(
            "order",
            bytemuck::cast_slice(if order.is_empty() { &[0u32] } else { order }),
        );
        let b_x = self.zeros("x", batch * pixels_per_image);
        let b_batch_labels = self.zeros("batch labels", batch);
        let op = plan::gather_batch(pixels_per_image, sequential, norm, augment);
        let buffers = [&step, &b_images, &b_labels, &b_order, &b_x, &b_batch_labels];
        self.run(&op, batch, &buffers)?;
        let out = g.read_buffers(&[&b_x, &b_batch_labels], "gather op")?;
        Ok((
            bytemuck::pod_collect_to_vec(&out[0][..4 * batch * pixels_per_image]),
            bytemuck::pod_collect_to_vec(&out[1][..4 * batch]),
        ))
    }
}
