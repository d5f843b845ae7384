//! Run one op's kernels on host data and read everything back: what the tests use to hold each
//! WGSL entry point to its CPU twin. It goes through the same pipelines, bind layouts and
//! dimension uniforms as the executor; only the buffers are made per call.

use anyhow::Result;

use crate::data::Normalization;
use crate::gpu::context::Gpu;
use crate::gpu::kernels::{self, Kernels, Work};
use crate::reference::{Conv2dShape, DenseShape, Pool2dShape};
use crate::spec::Loss;

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

pub struct Ops<'a> {
    pub gpu: &'a Gpu,
    pub kernels: &'a Kernels,
}

fn bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl Ops<'_> {
    fn zeros(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.gpu.storage(label, 4 * len as u64)
    }

    fn run(&self, label: &str, bind_group: &wgpu::BindGroup, entries: &[(&str, Work)]) {
        let mut encoder = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            for &(entry, work) in entries {
                self.kernels.dispatch(&mut pass, entry, bind_group, work);
            }
        }
        self.gpu.queue.submit(Some(encoder.finish()));
    }

    /// conv2d forward, backward input, backward weight and bias, in one submission.
    pub fn conv2d(
        &self,
        s: &Conv2dShape,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        d_output: &[f32],
    ) -> Result<LayerResult> {
        let mut entries = vec![
            (
                "conv2d_forward",
                Work::Threads((s.batch * kernels::conv_forward_threads_per_sample(s)) as u32),
            ),
            ("conv2d_backward_input", Work::Threads(s.input_len() as u32)),
            (
                "conv2d_backward_weight",
                Work::Groups(s.weight_len() as u32),
            ),
        ];
        if bias.is_some() {
            entries.push(("conv2d_backward_bias", Work::Groups(s.out_channels as u32)));
        }
        let dims = kernels::conv_dims(s, bias.is_some());
        let lens = [
            s.output_len(),
            s.input_len(),
            s.weight_len(),
            s.out_channels,
        ];
        self.layer_with_params(
            "conv2d",
            &dims,
            s.batch,
            [input, weight, d_output],
            bias,
            lens,
            &entries,
        )
    }

    /// Dense forward and both backward passes.
    pub fn dense(
        &self,
        s: &DenseShape,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        d_output: &[f32],
    ) -> Result<LayerResult> {
        let (n_in, n_out, n_w) = (
            s.batch * s.in_features,
            s.batch * s.out_features,
            s.in_features * s.out_features,
        );
        let mut entries = vec![
            ("dense_forward", Work::Threads(n_out as u32)),
            ("dense_backward_input", Work::Threads(n_in as u32)),
            ("dense_backward_weight", Work::Threads(n_w as u32)),
        ];
        if bias.is_some() {
            entries.push(("dense_backward_bias", Work::Threads(s.out_features as u32)));
        }
        let dims = kernels::dense_dims(s, bias.is_some());
        self.layer_with_params(
            "dense",
            &dims,
            s.batch,
            [input, weight, d_output],
            bias,
            [n_out, n_in, n_w, s.out_features],
            &entries,
        )
    }

    /// conv2d.wgsl and dense.wgsl share their bindings: make them from `data` (input, weight,
    /// d_output) and `bias`, run `entries` in one submission, and read back the output, d_input,
    /// d_weight and d_bias (`lens` values each).
    #[allow(clippy::too_many_arguments)]
    fn layer_with_params(
        &self,
        file: &str,
        dims: &[u32],
        batch: usize,
        data: [&[f32]; 3],
        bias: Option<&[f32]>,
        lens: [usize; 4],
        entries: &[(&str, Work)],
    ) -> Result<LayerResult> {
        let g = self.gpu;
        let [input, weight, d_output] = data;
        let dims = g.uniform("dims", dims);
        let step = g.uniform("step", &kernels::step_words(batch, 0, 0, true));
        let b_input = g.storage_init("input", bytes(input));
        let b_weight = g.storage_init("weight", bytes(weight));
        let b_bias = g.storage_init("bias", bytes(bias.unwrap_or(&[0.0])));
        let b_d_output = g.storage_init("d_output", bytes(d_output));
        let names = ["output", "d_input", "d_weight", "d_bias"];
        let [b_output, b_d_input, b_d_weight, b_d_bias] =
            [0, 1, 2, 3].map(|i| self.zeros(names[i], lens[i]));
        let buffers = [
            &dims,
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
        let bg = self.kernels.bind(g, file, file, &buffers);
        self.run(file, &bg, entries);
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
        let g = self.gpu;
        let dims = g.uniform("pool dims", &kernels::pool_dims(s));
        let step = g.uniform("step", &kernels::step_words(s.batch, 0, 0, true));
        let b_input = g.storage_init("input", bytes(input));
        let b_output = self.zeros("output", s.output_len());
        let b_d_output = g.storage_init("d_output", bytes(d_output));
        let b_d_input = self.zeros("d_input", s.input_len());
        let bg = self.kernels.bind(
            g,
            "pool",
            "pool op",
            &[&dims, &step, &b_input, &b_output, &b_d_output, &b_d_input],
        );
        let (forward, backward) = if max {
            ("max_pool2d_forward", "max_pool2d_backward")
        } else {
            ("avg_pool2d_forward", "avg_pool2d_backward")
        };
        self.run(
            "pool op",
            &bg,
            &[
                (forward, Work::Threads(s.output_len() as u32)),
                (backward, Work::Threads(s.input_len() as u32)),
            ],
        );
        let mut out = g.read_f32(
            &[(&b_output, s.output_len()), (&b_d_input, s.input_len())],
            "pool op",
        )?;
        let d_input = out.pop().unwrap();
        Ok((out.pop().unwrap(), d_input))
    }

    /// An elementwise op of `activation.wgsl` or `dropout.wgsl` over `batch` samples: runs
    /// `forward` then `backward` (which reads the forward output); returns (output, d_input).
    fn elementwise(
        &self,
        file: &str,
        dims: &[u32],
        step_words: [u32; 4],
        entries: (&str, &str),
        input: &[f32],
        d_output: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (forward, backward) = entries;
        let g = self.gpu;
        let n = input.len();
        let dims = g.uniform("element dims", dims);
        let step = g.uniform("step", &step_words);
        let b_input = g.storage_init("input", bytes(input));
        let b_output = self.zeros("output", n);
        let b_d_output = g.storage_init("d_output", bytes(d_output));
        let b_d_input = self.zeros("d_input", n);
        let bg = self.kernels.bind(
            g,
            file,
            forward,
            &[&dims, &step, &b_input, &b_output, &b_d_output, &b_d_input],
        );
        self.run(
            forward,
            &bg,
            &[
                (forward, Work::Threads(n as u32)),
                (backward, Work::Threads(n as u32)),
            ],
        );
        let mut out = g.read_f32(&[(&b_output, n), (&b_d_input, n)], forward)?;
        let d_input = out.pop().unwrap();
        Ok((out.pop().unwrap(), d_input))
    }

    /// `name` is relu, tanh or sigmoid; `input` holds `batch` samples.
    pub fn activation(
        &self,
        name: &str,
        batch: usize,
        input: &[f32],
        d_output: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let entries = (format!("{name}_forward"), format!("{name}_backward"));
        let dims = kernels::element_dims(input.len() / batch);
        self.elementwise(
            "activation",
            &dims,
            kernels::step_words(batch, 0, 0, true),
            (&entries.0, &entries.1),
            input,
            d_output,
        )
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
        let dims = kernels::dropout_dims(input.len(), p, seed);
        let entries = ("dropout_forward", "dropout_backward");
        self.elementwise(
            "dropout",
            &dims,
            kernels::step_words(1, step, 0, training),
            entries,
            input,
            d_output,
        )
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
        let dims = g.uniform("loss dims", &kernels::loss_dims(classes, loss));
        let step_u = g.uniform("step", &kernels::step_words(batch, step, 0, true));
        let b_logits = g.storage_init("logits", bytes(logits));
        let b_labels = g.storage_init("labels", bytemuck::cast_slice(&labels32));
        let b_d_logits = self.zeros("d_logits", logits.len());
        let b_loss = self.zeros("sample_loss", batch);
        let b_correct = self.zeros("sample_correct", batch);
        let b_metrics = g.storage_init("metrics", bytemuck::cast_slice(&kernels::metrics_zero()));
        let bg = self.kernels.bind(
            g,
            "loss",
            "loss op",
            &[
                &dims,
                &step_u,
                &b_logits,
                &b_labels,
                &b_d_logits,
                &b_loss,
                &b_correct,
                &b_metrics,
            ],
        );
        self.run(
            "loss op",
            &bg,
            &[
                ("loss_forward_backward", Work::Threads(batch as u32)),
                ("accumulate_metrics", Work::Groups(1)),
            ],
        );
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
        lr: f32,
        momentum: f32,
        param: &[f32],
        grad: &[f32],
        velocity: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let g = self.gpu;
        let n = param.len();
        let dims = g.uniform("sgd dims", &kernels::sgd_dims(n, lr, momentum));
        let b_param = g.storage_init("param", bytes(param));
        let b_grad = g.storage_init("grad", bytes(grad));
        let b_velocity = g.storage_init("velocity", bytes(velocity));
        let bg = self
            .kernels
            .bind(g, "sgd", "sgd op", &[&dims, &b_param, &b_grad, &b_velocity]);
        self.run("sgd op", &bg, &[("sgd_update", Work::Threads(n as u32))]);
        let mut out = g.read_f32(&[(&b_param, n), (&b_velocity, n)], "sgd op")?;
        let velocity = out.pop().unwrap();
        Ok((out.pop().unwrap(), velocity))
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
        let g = self.gpu;
        let labels32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let dims = g.uniform(
            "batch dims",
            &kernels::batch_dims(pixels_per_image, sequential, norm.mean, norm.std),
        );
        let step = g.uniform("step", &kernels::step_words(batch, 0, start, true));
        let b_images = g.storage_init("images", images);
        let b_labels = g.storage_init("labels", bytemuck::cast_slice(&labels32));
        let b_order = g.storage_init(
            "order",
            bytemuck::cast_slice(if order.is_empty() { &[0u32] } else { order }),
        );
        let b_x = self.zeros("x", batch * pixels_per_image);
        let b_batch_labels = self.zeros("batch labels", batch);
        let bg = self.kernels.bind(
            g,
            "batch",
            "gather op",
            &[
                &dims,
                &step,
                &b_images,
                &b_labels,
                &b_order,
                &b_x,
                &b_batch_labels,
            ],
        );
        self.run(
            "gather op",
            &bg,
            &[(
                "gather_batch",
                Work::Threads((batch * pixels_per_image) as u32),
            )],
        );
        let out = g.read_buffers(&[&b_x, &b_batch_labels], "gather op")?;
        Ok((
            bytemuck::pod_collect_to_vec(&out[0][..4 * batch * pixels_per_image]),
            bytemuck::pod_collect_to_vec(&out[1][..4 * batch]),
        ))
    }
}
